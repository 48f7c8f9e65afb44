"""Veins from QSM: strongly paramagnetic tubular structures (Frangi vesselness on χ, bright tubes).

Frangi AF, Niessen WJ, Vincken KL, Viergever MA. Multiscale vessel enhancement filtering. MICCAI 1998.
Hessians are scale-normalised (σ² · ∂²χ, units ppm), so the structure constant ``c_ppm`` is in ppm.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Volume, mask_box


def r2star_map(gre, mask=None) -> Volume:
    """R2* (1/s) from a multi-echo GRE magnitude by a log-linear fit over the echoes (GRE grid, clipped to
    0..200 s⁻¹; 0 outside ``mask`` when given). Needs at least two echoes."""
    mag = np.asarray(gre.magnitude, np.float32)
    te = np.asarray(gre.te_s, float)
    if mag.ndim != 4 or mag.shape[-1] < 2:
        raise InputError("R2* needs at least two echoes")
    logm = np.log(np.maximum(mag, 1e-3))
    tc = te - te.mean()
    slope = np.tensordot(logm, tc.astype(np.float32), axes=([3], [0])) / float((tc ** 2).sum())
    r2 = np.clip(-slope, 0.0, 200.0).astype(np.float32)
    if mask is not None:
        r2 *= np.asarray(getattr(mask, "data", mask)) > 0
    return Volume(r2, np.asarray(gre.ras_from_ijk, float), "R2* (1/s)")


def _chi_volume(qsm) -> Volume:
    vol = getattr(qsm, "chi_ppm", qsm)
    if not isinstance(vol, Volume) or np.asarray(vol.data).ndim != 3:
        raise InputError("vessel_mask expects a 3-D QSM Volume (χ in ppm) or a QSMResult")
    return vol


def _hessian_derivatives(img: np.ndarray, s_vox) -> dict:
    """Gaussian second derivatives {(a, b): array} (a <= b) of ``img`` at scales ``s_vox`` (voxels per
    axis): the separable passes along axes 0, 1, 2 shared between components (15 1-D passes instead of
    18 x 3), same numbers as ``ndimage.gaussian_filter(img, s_vox, order=...)``."""
    def f1d(x, axis, order):
        return ndimage.gaussian_filter1d(x, s_vox[axis], axis=axis, order=order, mode="nearest",
                                         output=np.float32)
    out = {}
    first = {o: f1d(img, 0, o) for o in (0, 1, 2)}
    for o0, x0 in first.items():
        for o1 in range(0, 3 - o0):
            x1 = f1d(x0, 1, o1)
            o2 = 2 - o0 - o1
            orders = (o0, o1, o2)
            axes = [a for a in range(3) for _ in range(orders[a])]
            out[(axes[0], axes[1])] = f1d(x1, 2, o2)
    return out


def vesselness(chi_ppm: np.ndarray, voxel_mm, sigmas_mm=(0.7, 1.0, 1.5), alpha: float = 0.5,
               beta: float = 0.5, c_ppm: float = 0.05, candidates: np.ndarray | None = None) -> np.ndarray:
    """Maximum over scales of the Frangi bright-tube measure (0..1), on ``candidates`` voxels (else all).

    ``chi_ppm`` (I, J, K) with voxel sizes ``voxel_mm``; ``sigmas_mm`` Gaussian scales in mm."""
    chi = np.asarray(chi_ppm, np.float32)
    voxel_mm = np.asarray(voxel_mm, float)
    cand = np.ones(chi.shape, bool) if candidates is None else np.asarray(candidates, bool)
    out = np.zeros(chi.shape, np.float32)
    where = np.nonzero(cand)
    if not len(where[0]):
        return out
    best = np.zeros(len(where[0]), np.float32)
    for sigma in sigmas_mm:
        h = np.empty((len(where[0]), 3, 3), np.float32)
        for (a, b), d in _hessian_derivatives(chi, sigma / voxel_mm).items():
            v = d[where] * (sigma ** 2 / (voxel_mm[a] * voxel_mm[b]))
            h[:, a, b] = v
            h[:, b, a] = v
        lam = np.linalg.eigvalsh(h)
        order_idx = np.argsort(np.abs(lam), axis=1)
        lam = np.take_along_axis(lam, order_idx, axis=1)  # |l1| <= |l2| <= |l3|
        l1, l2, l3 = lam[:, 0], lam[:, 1], lam[:, 2]
        ra = np.abs(l2) / np.maximum(np.abs(l3), 1e-12)
        rb = np.abs(l1) / np.sqrt(np.maximum(np.abs(l2 * l3), 1e-24))
        s = np.sqrt(l1 ** 2 + l2 ** 2 + l3 ** 2)
        v = (1 - np.exp(-ra ** 2 / (2 * alpha ** 2))) * np.exp(-rb ** 2 / (2 * beta ** 2)) \
            * (1 - np.exp(-s ** 2 / (2 * c_ppm ** 2)))
        v[(l2 > 0) | (l3 > 0)] = 0.0  # bright tubes only
        best = np.maximum(best, v.astype(np.float32))
    out[where] = best
    return out


def _ball(radius_mm, voxel_mm):
    r = np.ceil(radius_mm / np.asarray(voxel_mm)).astype(int)
    g = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((x * v) ** 2 for x, v in zip(g, voxel_mm)) <= radius_mm ** 2


def _blob_zone(chi, brain, voxel_mm, level_ppm, radius_mm):
    """Thick, compact paramagnetic regions (deep nuclei) grown by 1.5 mm: voxels that are not veins."""
    smooth = ndimage.gaussian_filter(chi, 1.0 / np.asarray(voxel_mm), mode="nearest")
    high = brain & (smooth >= level_ppm)
    zone = np.zeros(chi.shape, bool)
    if not high.any():
        return zone
    box = mask_box(high, int(np.ceil((radius_mm + 2) / min(voxel_mm))) + 1)
    thick = ndimage.binary_opening(high[box], structure=_ball(radius_mm, voxel_mm))
    lab, n = ndimage.label(thick)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        pts = np.argwhere(lab[sl] == k) * np.asarray(voxel_mm)
        if len(pts) < 4:
            continue
        ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
        if ev[0] > 16.0 * max(ev[1], 1e-6):   # length ratio > 4: a sinus, not a nucleus
            thick[sl][lab[sl] == k] = False
    zone[box] = ndimage.binary_dilation(thick, structure=_ball(1.5, voxel_mm))
    return zone


def vessel_mask(qsm, brain_mask=None, sigmas_mm=(0.7, 1.0, 1.5), chi_min_ppm: float = 0.1,
                contrast_min_ppm: float = 0.08, background_sigma_mm: float = 2.0,
                vesselness_min: float = 0.1, min_voxels: int = 6, exclude=None,
                hysteresis: float = 1.0, blob_radius_mm: float = 0.0, r2star=None,
                r2star_contrast_hz: float = 8.0, r2star_vesselness_min: float = 0.3,
                r2star_chi_min_ppm: float = 0.03, exclude_margin_mm: float = 1.5) -> Volume:
    """Vein mask (uint8 Volume on the QSM grid, RAS geometry of ``qsm``).

    A voxel is a vein where χ ≥ ``chi_min_ppm`` (veins ≈ 0.3–0.6 ppm, but reconstructed thin veins come out
    at a third of that: partial volume and regularisation), χ exceeds
    its local background (Gaussian, ``background_sigma_mm``) by ``contrast_min_ppm`` (thin bright
    structures, not the rims of large paramagnetic nuclei such as GP/SN) and its
    multiscale Frangi bright-tube vesselness ≥ ``vesselness_min``; components smaller than ``min_voxels``
    are dropped. ``brain_mask`` (Volume/array, same grid) limits the search; ``exclude`` (Volume/array)
    removes voxels (e.g. the segmented nuclei), grown by ``exclude_margin_mm`` (their partial-volume rim).
    ``qsm``: a χ Volume (ppm) or a QSMResult.
    ``hysteresis`` < 1 grows each detected vein into connected voxels passing the three thresholds scaled
    by that factor (reconstructed veins are thinner and fainter than they are: partial volume, TV).
    Voxels in or next to thick paramagnetic blobs (deep nuclei: survive an opening with a ball of
    ``blob_radius_mm``, not elongated) are not veins; thick elongated ones (sinuses) are kept.
    ``r2star`` (Volume, 1/s, same grid; see ``r2star_map``): deoxygenated blood also decays fast, so bright
    R2* tubes (R2* ≥ ``r2star_contrast_hz`` above its 2 mm background, vesselness ≥
    ``r2star_vesselness_min``) with χ ≥ ``r2star_chi_min_ppm`` are veins too (the SWI idea)."""
    vol = _chi_volume(qsm)
    chi = np.nan_to_num(np.asarray(vol.data, np.float32))
    if brain_mask is None and hasattr(qsm, "mask") and isinstance(qsm.mask, Volume):
        brain_mask = qsm.mask
    brain = np.ones(chi.shape, bool) if brain_mask is None else \
        np.asarray(getattr(brain_mask, "data", brain_mask)).astype(bool)
    if brain.shape != chi.shape:
        raise InputError("vessel_mask: the brain mask is not on the QSM grid")
    out = np.zeros(chi.shape, np.uint8)
    if exclude is not None:
        exclude = np.asarray(getattr(exclude, "data", exclude)).astype(bool)
        if exclude_margin_mm > 0 and exclude.any():
            box = mask_box(exclude, int(np.ceil(exclude_margin_mm / vol.voxel_mm.min())) + 1)
            grown = np.zeros_like(exclude)
            grown[box] = ndimage.binary_dilation(exclude[box], structure=_ball(exclude_margin_mm, vol.voxel_mm))
            exclude = grown
    h = min(float(hysteresis), 1.0)
    seeds = brain & (chi >= h * chi_min_ppm)
    contrast = None
    if seeds.any() and contrast_min_ppm > 0:
        box = mask_box(seeds, int(np.ceil(3 * background_sigma_mm / vol.voxel_mm.min())) + 1)
        background = ndimage.gaussian_filter(chi[box], background_sigma_mm / vol.voxel_mm, mode="nearest")
        contrast = np.zeros(chi.shape, np.float32)
        contrast[box] = chi[box] - background
        seeds &= contrast >= h * contrast_min_ppm
    if exclude is not None:
        seeds &= ~np.asarray(getattr(exclude, "data", exclude)).astype(bool)
    if seeds.any() and blob_radius_mm > 0:
        seeds &= ~_blob_zone(chi, brain, vol.voxel_mm, 0.8 * h * chi_min_ppm, blob_radius_mm)
    if seeds.any():
        pad = int(np.ceil(3 * max(sigmas_mm) / vol.voxel_mm.min())) + 1
        box = mask_box(seeds, pad)
        v = vesselness(chi[box], vol.voxel_mm, sigmas_mm, candidates=seeds[box])
        weak = v >= h * vesselness_min
        m = weak & (v >= vesselness_min) & (chi[box] >= chi_min_ppm)
        if contrast is not None:
            m &= contrast[box] >= contrast_min_ppm
        if h < 1.0 and m.any():
            lab, n = ndimage.label(weak, structure=np.ones((3, 3, 3)))
            keep = np.zeros(n + 1, bool)
            keep[np.unique(lab[m])] = True
            keep[0] = False
            m = keep[lab]
        if min_voxels > 1 and m.any():
            lab, n = ndimage.label(m, structure=np.ones((3, 3, 3)))
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_voxels
            keep[0] = False
            m = keep[lab]
        out[box] = m
    if r2star is not None:
        r2 = np.nan_to_num(np.asarray(getattr(r2star, "data", r2star), np.float32)) * brain
        if r2.shape != chi.shape:
            raise InputError("vessel_mask: the R2* map is not on the QSM grid")
        background = ndimage.gaussian_filter(r2, background_sigma_mm / vol.voxel_mm, mode="nearest")
        cand = brain & ((r2 - background) >= r2star_contrast_hz) & (chi >= r2star_chi_min_ppm)
        if exclude is not None:
            cand &= ~np.asarray(getattr(exclude, "data", exclude)).astype(bool)
        if cand.any():
            pad = int(np.ceil(3 * max(sigmas_mm) / vol.voxel_mm.min())) + 1
            box = mask_box(cand, pad)
            v = vesselness(r2[box] / 100.0, vol.voxel_mm, sigmas_mm, candidates=cand[box])
            m2 = v >= r2star_vesselness_min
            if min_voxels > 1 and m2.any():
                lab, n = ndimage.label(m2, structure=np.ones((3, 3, 3)))
                sizes = np.bincount(lab.ravel())
                keep = sizes >= min_voxels
                keep[0] = False
                m2 = keep[lab]
            out[box] |= m2.astype(np.uint8)
    res = Volume(out, vol.ras_from_ijk.copy(), "vessels",
                 {"method": "Frangi bright-tube vesselness on chi", "chi_min_ppm": chi_min_ppm,
                  "vesselness_min": vesselness_min, "sigmas_mm": list(sigmas_mm)})
    return res
