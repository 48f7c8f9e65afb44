"""Synthetic stereotactic CT: the Leksell G N-localizer rendered on any voxel grid.

Rods are cylinders rendered with partial volume (each voxel is supersampled as a box), in HU,
over air (-1000 HU) or over a given head image. Used by the digital patient and by the tests.
"""
from __future__ import annotations

import numpy as np

from ..volume import Volume
from .geometry import ALL_PLATES, apply

AIR_HU = -1000.0
ROD_HU = 1500.0          # CT localizer rods appear far brighter than bone in most protocols
ROD_RADIUS_MM = 1.0
PIN_HU = 3000.0


def _segment_distance(p, a, b):
    """Distance from points p (N, 3) to the segment a-b (all in the same mm space)."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def _rasterise_segment(weights, ijk_from_xyz, a_xyz, b_xyz, radius_mm, shape, spacing, pad_mm,
                       chunk=20000):
    """Partial-volume occupancy of one rod (a capsule of ``radius_mm``), max-combined into ``weights``.

    ``ijk_from_xyz`` maps Leksell XYZ to voxel indices; supersampling is box-shaped per voxel.
    """
    length = np.linalg.norm(b_xyz - a_xyz)
    step = 0.7 * float(min(spacing.min(), radius_mm))
    n = max(2, int(np.ceil(length / step)) + 1)
    samples = a_xyz + np.linspace(0.0, 1.0, n)[:, None] * (b_xyz - a_xyz)
    centers = apply(ijk_from_xyz, samples)
    xyz_from_ijk = np.linalg.inv(ijk_from_xyz)
    # half-width in voxels of a ball of radius (radius + pad) in each index direction
    reach_mm = radius_mm + pad_mm
    half = np.ceil(reach_mm * np.linalg.norm(ijk_from_xyz[:3, :3], axis=1)).astype(int)
    offs = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    base = np.round(centers).astype(np.int64)
    shape_arr = np.array(shape)
    cand = []
    for s in range(0, len(base), 256):
        c = (base[s:s + 256, None, :] + offs[None]).reshape(-1, 3)
        ok = np.all((c >= 0) & (c < shape_arr), axis=1)
        c = c[ok]
        cand.append(np.ravel_multi_index(c.T, shape))
    if not cand:
        return
    lin = np.unique(np.concatenate(cand))
    if lin.size == 0:
        return
    ijk = np.stack(np.unravel_index(lin, shape), -1).astype(float)
    # cheap pre-filter on the voxel centre
    d0 = _segment_distance(apply(xyz_from_ijk, ijk), a_xyz, b_xyz)
    keep = d0 <= reach_mm
    lin, ijk = lin[keep], ijk[keep]
    nsub = np.clip(np.ceil(spacing / 0.3), 2, 12).astype(int)
    sub = np.stack(np.meshgrid(*[(np.arange(m) + 0.5) / m - 0.5 for m in nsub], indexing="ij"),
                   -1).reshape(-1, 3)
    flat = weights.reshape(-1)
    for s in range(0, len(lin), chunk):
        pts = (ijk[s:s + chunk, None, :] + sub[None]).reshape(-1, 3)
        d = _segment_distance(apply(xyz_from_ijk, pts), a_xyz, b_xyz)
        w = (d <= radius_mm).reshape(-1, len(sub)).mean(axis=1)
        idx = lin[s:s + chunk]
        flat[idx] = np.maximum(flat[idx], w)


def render_localizer_ct(ras_from_ijk, shape, xyz_from_ras, head_hu=None, noise_hu=8.0, rng=None,
                        plates=("right", "left", "anterior"), rod_hu=ROD_HU,
                        rod_radius_mm=ROD_RADIUS_MM, pins_xyz=None) -> Volume:
    """CT in HU on the grid (``ras_from_ijk`` 4x4 voxel->RAS mm, ``shape`` (I, J, K)) showing the
    Leksell G N-localizer plates placed by ``xyz_from_ras`` (4x4, image RAS mm -> Leksell XYZ mm).

    ``plates``: any of right, left, anterior, posterior (MR boxes).
    ``head_hu`` (same grid, optional) replaces the air background; rods are blended with partial
    volume: value = (1 - w) * background + w * rod_hu. Gaussian noise of ``noise_hu`` SD is added
    (``rng``: seed or numpy Generator). ``pins_xyz``: optional list of (start, end) XYZ segments
    rendered as 4 mm metal pins (distractors for the detector).
    """
    shape = tuple(int(s) for s in shape[:3])
    ras_from_ijk = np.asarray(ras_from_ijk, float)
    xyz_from_ras = np.asarray(xyz_from_ras, float)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if head_hu is not None:
        background = np.asarray(getattr(head_hu, "data", head_hu), dtype=np.float32)
        if background.shape[:3] != shape:
            raise ValueError(f"head_hu shape {background.shape} differs from the grid {shape}")
        background = background.copy()
    else:
        background = np.full(shape, AIR_HU, np.float32)
    ijk_from_xyz = np.linalg.inv(xyz_from_ras @ ras_from_ijk)
    spacing = np.linalg.norm(ras_from_ijk[:3, :3], axis=0)
    pad = 0.5 * float(np.linalg.norm(spacing))

    weights = np.zeros(shape, np.float32)
    for name in plates:
        for a, b in ALL_PLATES[name].rods():
            _rasterise_segment(weights, ijk_from_xyz, a, b, rod_radius_mm, shape, spacing, pad)
    data = background + weights * (np.float32(rod_hu) - background)
    if pins_xyz:
        pin_w = np.zeros(shape, np.float32)
        for a, b in pins_xyz:
            _rasterise_segment(pin_w, ijk_from_xyz, np.asarray(a, float), np.asarray(b, float), 2.0,
                               shape, spacing, pad)
        data = data + pin_w * (np.float32(PIN_HU) - data)
    if noise_hu:
        data += np.float32(noise_hu) * rng.standard_normal(shape, dtype=np.float32)
    meta = {"modality": "CT", "units": "HU", "localizer": "Leksell G N-localizer",
            "plates": list(plates), "xyz_from_ras": xyz_from_ras.tolist()}
    return Volume(data.astype(np.float32), ras_from_ijk.copy(), "ct", meta)


def analytic_triplets(xyz_from_ras, slice_normal_ras=(0.0, 0.0, 1.0), offsets_mm=None,
                      plates=("right", "left", "anterior"), noise_mm: float = 0.0, rng=None,
                      margin_mm: float = 2.0):
    """Exact rod/slice intersections (image RAS mm) for planes ``n . p = offset`` (``offsets_mm``,
    default every 1 mm across the box) as ``registration.Triplet``s, with optional isotropic Gaussian
    centroid noise (``noise_mm`` SD per coordinate). Rod order is randomised, as a detector sees it.
    Hits closer than ``margin_mm`` to a rod end are skipped."""
    from .registration import Triplet
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ras_from_xyz = np.linalg.inv(np.asarray(xyz_from_ras, float))
    n = np.asarray(slice_normal_ras, float)
    n = n / np.linalg.norm(n)
    if offsets_mm is None:
        corners = apply(ras_from_xyz, np.array([[x, y, z] for x in (0, 200) for y in (-20, 220)
                                                for z in (40, 160)], float))
        proj = corners @ n
        offsets_mm = np.arange(np.floor(proj.min()), np.ceil(proj.max()) + 1.0, 1.0)
    out = []
    for off in offsets_mm:
        for name in plates:
            hits = []
            for a, b in ALL_PLATES[name].rods():
                pa, pb = apply(ras_from_xyz, a), apply(ras_from_xyz, b)
                den = (pb - pa) @ n
                if abs(den) < 1e-9:
                    break
                t = (off - pa @ n) / den
                length = np.linalg.norm(pb - pa)
                if not (margin_mm / length < t < 1 - margin_mm / length):
                    break
                hits.append(pa + t * (pb - pa))
            if len(hits) != 3:
                continue
            hits = [h + (rng.normal(0.0, noise_mm, 3) if noise_mm else 0.0) for h in hits]
            first, diag, second = hits
            tr = Triplet(first, diag, second, -1)
            out.append(tr.flipped() if rng.random() < 0.5 else tr)
    return out
