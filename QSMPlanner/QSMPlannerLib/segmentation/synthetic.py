"""Small synthetic midbrain QSM for tests and benchmarks (no atlas, no registration needed).

Ellipsoidal STN, SN and RN on both sides with literature χ (ppm), iron texture, partial volume,
white-matter background with texture, one vein, Gaussian noise; plus a deliberately displaced and
shrunk "atlas" prior in CIT168 values. Truth and prior are in CIT168 values on the same grid.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..volume import Volume, ras_from_ijk_matrix, rotation_matrix

# left-side structures (RAS mm, semi-axes mm, rotation deg about R, A, S); right side mirrors R
_LEFT = {
    "STN": dict(center=(-11.5, -13.0, -4.0), semi=(5.5, 3.0, 2.3), rot=(15.0, 0.0, -35.0), chi=0.09, cit=(16,)),
    "SN": dict(center=(-9.5, -17.0, -9.8), semi=(8.5, 4.0, 2.8), rot=(10.0, 0.0, -45.0), chi=0.15, cit=(7, 9)),
    "RN": dict(center=(-4.5, -20.0, -7.0), semi=(3.2, 3.5, 4.0), rot=(0.0, 0.0, 0.0), chi=0.12, cit=(8,)),
}
BACKGROUND_CHI = -0.02


def _structures(side: str, shift=(0.0, 0.0, 0.0), scale=1.0):
    sign = 1.0 if side == "L" else -1.0
    out = {}
    for kind, d in _LEFT.items():
        c = np.array(d["center"]) * np.array([sign, 1.0, 1.0]) + np.asarray(shift, float)
        rot = np.array(d["rot"]) * np.array([1.0, -1.0, -1.0] if side == "R" else [1.0, 1.0, 1.0])
        out[kind] = dict(center=c, semi=np.array(d["semi"]) * scale, rot=rotation_matrix(rot),
                         chi=d["chi"], cit=tuple(v + (100 if side == "R" else 0) for v in d["cit"]))
    return out


def _normalized_radius2(points, center, semi, rot):
    local = (points - center) @ rot  # coordinates in the ellipsoid frame
    return ((local / semi) ** 2).sum(axis=-1)


def _label_field(points, structs_by_side, split_sn=True):
    """CIT168 labels at points (N,3): nearest (in normalized radius) ellipsoid containing the point."""
    best = np.full(points.shape[0], 1.0)
    lab = np.zeros(points.shape[0], np.int16)
    for structs in structs_by_side:
        for kind, d in structs.items():
            r2 = _normalized_radius2(points, d["center"], d["semi"], d["rot"])
            win = r2 < best
            best[win] = r2[win]
            if kind == "SN" and split_sn:
                local = (points - d["center"]) @ d["rot"]
                lab[win] = np.where(local[win, 2] > 0, d["cit"][0], d["cit"][1])
            else:
                lab[win] = d["cit"][0]
    return lab


def make_case(seed: int = 0, shape=(60, 52, 40), voxel_mm: float = 1.0,
              prior_shift_mm=(1.5, -1.5, 1.0), prior_scale: float = 0.85, contrast: float = 1.0,
              noise_ppm: float = 0.01, asymmetric: bool = False, vein: bool = True) -> dict:
    """A synthetic case. Returns {"qsm": Volume (ppm), "truth": Volume (CIT168), "prior": Volume
    (CIT168, displaced/shrunk), "chi_true": Volume}. ``contrast`` scales the nuclei's χ above
    background; ``asymmetric`` moves and enlarges the right-side nuclei away from the symmetric prior."""
    rng = np.random.default_rng(seed)
    center_ras = np.array([0.0, -16.0, -7.0])
    origin = center_ras - (np.array(shape) - 1) / 2.0 * voxel_mm
    ras_from_ijk = ras_from_ijk_matrix([voxel_mm] * 3, origin=origin)
    jitter = rng.normal(0.0, 0.7, 3)
    truth_sides = [_structures("L", jitter), _structures("R", jitter * [-1, 1, 1]
                                                         + ([1.5, 1.0, -1.0] if asymmetric else 0.0),
                                                         1.12 if asymmetric else 1.0)]
    shift = np.asarray(prior_shift_mm, float)
    prior_sides = [_structures("L", shift, prior_scale),
                   _structures("R", shift * [-1, 1, 1], prior_scale)]

    grid = Volume(np.zeros(shape, np.uint8), ras_from_ijk)
    centres = grid.voxel_ras_grid().reshape(-1, 3)
    truth = _label_field(centres, truth_sides).reshape(shape)
    prior = _label_field(centres, prior_sides).reshape(shape)

    # χ with partial volume: average of 2x2x2 sub-voxel samples
    chi_of = {v: d["chi"] * contrast for s in truth_sides for d in s.values() for v in d["cit"]}
    chi = np.zeros(shape)
    offsets = (np.array([[i, j, k] for i in (-0.25, 0.25) for j in (-0.25, 0.25) for k in (-0.25, 0.25)])
               * voxel_mm)
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.5 / voxel_mm)
    texture /= texture.std() + 1e-12
    for off in offsets:
        lab = _label_field(centres + off, truth_sides).reshape(shape)
        sub = np.full(shape, BACKGROUND_CHI)
        for v, c in chi_of.items():
            sub[lab == v] = c
        chi += sub / len(offsets)
    nucleus = truth > 0
    chi = chi + np.where(nucleus, 0.15 * contrast * 0.1, 0.008) * texture  # iron / tissue texture
    wm = ndi.gaussian_filter(rng.normal(0, 1, shape), 4.0 / voxel_mm)
    chi += 0.01 * wm / (wm.std() + 1e-12)
    if vein:
        # a vein running superior-inferior lateral to the left STN
        vc = grid.ras_to_ijk(np.array([-20.0, -10.0, 0.0]))
        ii, jj = np.indices(shape[:2])
        d2 = (ii - vc[0]) ** 2 + (jj - vc[1]) ** 2
        chi += np.where(d2 <= (1.0 / voxel_mm) ** 2, 0.4, 0.0)[..., None]
    chi_true = chi.copy()
    chi = chi + rng.normal(0.0, noise_ppm, shape)
    return {"qsm": Volume(chi.astype(np.float32), ras_from_ijk, "qsm"),
            "chi_true": Volume(chi_true.astype(np.float32), ras_from_ijk, "chi_true"),
            "truth": Volume(truth, ras_from_ijk, "truth"),
            "prior": Volume(prior, ras_from_ijk, "prior")}


# χ (ppm) of CIT168 labels for the atlas-shaped case (3 T literature ranges; others ~ grey matter)
ATLAS_CHI = {16: 0.09, 7: 0.13, 9: 0.16, 8: 0.12, 6: 0.18, 5: 0.15, 1: 0.06, 2: 0.05, 3: 0.03,
             4: 0.02, 12: 0.05, 13: 0.02, 14: 0.01, 15: 0.02}


def make_atlas_case(seed: int = 0, box_ras=((-32.0, -42.0, -28.0), (32.0, 6.0, 6.0)),
                    voxel_mm: float = 1.0, max_shift_mm: float = 2.5, max_rot_deg: float = 4.0,
                    scale_range=(0.9, 1.1), warp_mm: float = 1.0, contrast: float = 1.0,
                    noise_ppm: float = 0.01, asymmetric_mm: float = 0.0,
                    grid_from_world=None) -> dict:
    """Atlas-shaped case in MNI space: the CIT168 labels moved by a random affine plus a smooth warp
    (the patient's truth), χ per label with partial volume, texture and noise; the prior is the
    undeformed atlas. ``asymmetric_mm`` moves the right-side nuclei by that much more (anterior).
    ``grid_from_world`` (4x4 RAS, optional) places the QSM grid in another space (e.g. a GRE space:
    returned volumes carry ras_from_ijk in that space; truth/prior are the same arrays).
    Returns {"qsm", "truth", "prior", "world_from_grid_space"}."""
    from ..registration import resample
    from ..volume import rotation_matrix as _rot
    from .prior import atlas_labels
    rng = np.random.default_rng(seed)
    lo, hi = (np.asarray(b, float) for b in box_ras)
    shape = tuple(int(v) for v in np.round((hi - lo) / voxel_mm) + 1)
    ras_from_ijk = ras_from_ijk_matrix([voxel_mm] * 3, origin=lo)
    grid = Volume(np.zeros(shape, np.uint8), ras_from_ijk)
    fine = Volume(np.zeros(tuple(2 * s for s in shape), np.uint8),
                  ras_from_ijk_matrix([voxel_mm / 2] * 3, origin=lo - voxel_mm / 4))
    atlas = atlas_labels()
    # patient_from_atlas: affine about the midbrain centre
    c = np.array([0.0, -16.0, -9.0])
    a = np.eye(4)
    a[:3, :3] = _rot(rng.uniform(-max_rot_deg, max_rot_deg, 3)) * rng.uniform(*scale_range)
    a[:3, 3] = c - a[:3, :3] @ c + rng.uniform(-max_shift_mm, max_shift_mm, 3)
    atlas_warped = atlas
    if warp_mm > 0 or asymmetric_mm:
        # smooth displacement applied in atlas space (pulling): atlas(x + d(x))
        import SimpleITK as sitk
        disp = np.stack([ndi.gaussian_filter(rng.normal(0, 1, atlas.shape3), 6.0) for _ in range(3)], -1)
        disp *= warp_mm / (np.abs(disp).max() + 1e-12)
        if asymmetric_mm:
            right = atlas.voxel_ras_grid()[..., 0] > 0
            disp[..., 1] -= asymmetric_mm * ndi.gaussian_filter(right.astype(float), 2.0)
        disp_lps = disp * np.array([-1.0, -1.0, 1.0])
        field = atlas.with_data(disp_lps).to_sitk(np.float64)
        tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        atlas_warped = resample(atlas, atlas, interpolation="nearest", transform=tx)
    truth_fine = resample(atlas_warped, fine, reference_from_vol=a, interpolation="nearest")
    truth = resample(atlas_warped, grid, reference_from_vol=a, interpolation="nearest")
    prior = resample(atlas, grid, interpolation="nearest")
    lab = np.asarray(truth_fine.data)
    chi_f = np.full(lab.shape, BACKGROUND_CHI)
    for v, x in ATLAS_CHI.items():
        for vv in (v, v + 100):
            chi_f[lab == vv] = BACKGROUND_CHI + (x - BACKGROUND_CHI) * contrast
    chi = chi_f.reshape(shape[0], 2, shape[1], 2, shape[2], 2).mean(axis=(1, 3, 5))
    nucleus = np.asarray(truth.data) > 0
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.5 / voxel_mm)
    texture /= texture.std() + 1e-12
    chi = chi + np.where(nucleus, 0.015 * contrast, 0.008) * texture
    wm = ndi.gaussian_filter(rng.normal(0, 1, shape), 4.0 / voxel_mm)
    chi += 0.01 * wm / (wm.std() + 1e-12)
    chi = chi + rng.normal(0.0, noise_ppm, shape)
    m = np.eye(4) if grid_from_world is None else np.asarray(grid_from_world, float)
    placed = m @ ras_from_ijk
    return {"qsm": Volume(chi.astype(np.float32), placed, "qsm"),
            "truth": Volume(np.asarray(truth.data).astype(np.int16), placed, "truth"),
            "prior": Volume(np.asarray(prior.data).astype(np.int16), placed, "prior"),
            "patient_from_atlas": a}
