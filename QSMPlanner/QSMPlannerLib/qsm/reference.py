"""Susceptibility reference regions: whole-brain mean (default) or CSF (ventricles, from R2*)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def r2star_map(magnitude: np.ndarray, te_s, mask: np.ndarray) -> np.ndarray:
    """Mono-exponential R2* (1/s) by a log-linear least-squares fit over echoes; 0 outside ``mask``."""
    mag = np.maximum(np.asarray(magnitude, np.float32), 1e-12)
    te = np.asarray(te_s, np.float64)
    if te.size < 2:
        return np.zeros(mag.shape[:3], np.float32)
    tc = (te - te.mean()).astype(np.float32)
    logm = np.log(mag)
    slope = (logm * tc).sum(axis=3) / np.float32((tc ** 2).sum())
    return np.where(mask, -slope, 0).astype(np.float32)


def csf_mask(magnitude: np.ndarray, te_s, mask: np.ndarray, max_r2star: float = 6.0) -> np.ndarray:
    """CSF reference voxels: inside ``mask``, R2* below ``max_r2star`` (1/s) and first-echo magnitude
    above the brain median, one voxel in from the mask edge (partial volume), largest pieces kept
    (components of at least 20 voxels)."""
    mask = np.asarray(mask, bool)
    mag1 = np.asarray(magnitude)[..., 0]
    r2s = r2star_map(magnitude, te_s, mask)
    inner = ndimage.binary_erosion(mask, iterations=2)
    csf = inner & (r2s < max_r2star) & (mag1 > np.median(mag1[mask]))
    csf = ndimage.binary_opening(csf)
    lab, n = ndimage.label(csf)
    if n == 0:
        return csf
    sizes = np.bincount(lab.ravel())
    keep = sizes >= 20
    keep[0] = False
    return keep[lab]
