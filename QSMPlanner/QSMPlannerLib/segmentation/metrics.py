"""Overlap and distance metrics between binary masks on one grid (mm from the voxel size)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..volume import mask_box


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


def _surface_distances(a, b, voxel_mm) -> np.ndarray | None:
    """Distances (mm) from each border voxel of a to b's border voxels, and from b's to a's."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return None
    box = mask_box(a | b, 1)   # both borders lie inside: the distances are the same on the box
    a, b = a[box], b[box]
    sa = a & ~ndi.binary_erosion(a)
    sb = b & ~ndi.binary_erosion(b)
    da = ndi.distance_transform_edt(~sb, sampling=voxel_mm)[sa]
    db = ndi.distance_transform_edt(~sa, sampling=voxel_mm)[sb]
    return np.concatenate([da, db])


def hausdorff95_mm(a: np.ndarray, b: np.ndarray, voxel_mm) -> float:
    """95th percentile of the symmetric surface-to-surface distances (mm). Voxel-quantized: masks
    within about a voxel of each other all score one voxel (see ``mean_surface_distance_mm``)."""
    d = _surface_distances(a, b, voxel_mm)
    return float("inf") if d is None else float(np.percentile(d, 95))


def mean_surface_distance_mm(a: np.ndarray, b: np.ndarray, voxel_mm) -> float:
    """Average symmetric surface distance (mm): the mean of the same distances."""
    d = _surface_distances(a, b, voxel_mm)
    return float("inf") if d is None else float(np.mean(d))
