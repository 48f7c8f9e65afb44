"""Overlap and distance metrics between binary masks on one grid (mm from the voxel size)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return float(2.0 * (a & b).sum() / s) if s else 1.0


def centroid_error_mm(a: np.ndarray, b: np.ndarray, ras_from_ijk) -> float:
    if not a.any() or not b.any():
        return float("inf")
    m = np.asarray(ras_from_ijk, float)[:3, :3]
    d = np.argwhere(a).mean(axis=0) - np.argwhere(b).mean(axis=0)
    return float(np.linalg.norm(m @ d))


def hausdorff95_mm(a: np.ndarray, b: np.ndarray, voxel_mm) -> float:
    """95th percentile of the symmetric surface-to-surface distances (mm)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return float("inf")
    sa = a & ~ndi.binary_erosion(a)
    sb = b & ~ndi.binary_erosion(b)
    da = ndi.distance_transform_edt(~sb, sampling=voxel_mm)[sa]
    db = ndi.distance_transform_edt(~sa, sampling=voxel_mm)[sb]
    return float(np.percentile(np.concatenate([da, db]), 95))
