"""Risk structures as distance maps (mm), sampled at world RAS points.

Each layer keeps its own grid and a ``world_from_volume`` matrix (RAS->RAS 4x4), so the vessels on the
QSM grid and the ventricles on the T1 grid are used without resampling. Distances are Euclidean, in mm,
from a point to the nearest voxel of the structure, less half a voxel (≈ distance to its surface).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Volume

FAR_MM = 999.0  # distance reported outside a layer's field of view / when the structure is absent


@dataclass
class _Layer:
    distance_mm: np.ndarray  # float32 (I, J, K)
    ijk_from_world: np.ndarray
    world_from_ijk: np.ndarray
    n_voxels: int


def _mask_array(mask) -> np.ndarray:
    return np.asarray(getattr(mask, "data", mask)).astype(bool)


class RiskMap:
    """Named distance maps in mm: 'vessels', 'ventricles', 'sulci' (and 'brain': 1 inside, 0 outside).

    ``distance(name, points_ras)`` samples one layer (trilinear) at world RAS points (N, 3)."""

    def __init__(self):
        self.layers: dict[str, _Layer] = {}

    @classmethod
    def from_masks(cls, vessels=None, ventricles=None, sulci=None, brain=None,
                   world_from_volume: dict | None = None) -> "RiskMap":
        """Masks are Volumes (any grid). ``world_from_volume`` {layer name: 4x4} places a mask's RAS in the
        world (default identity). ``brain`` is stored as an inside indicator (1 inside, 0 outside)."""
        rm = cls()
        w = world_from_volume or {}
        for name, m in (("vessels", vessels), ("ventricles", ventricles), ("sulci", sulci)):
            if m is not None:
                rm.add(name, m, w.get(name))
        if brain is not None:
            rm.add_depth("brain", brain, w.get("brain"))
        return rm

    def _register(self, name, vol: Volume, dist: np.ndarray, world_from_volume, n):
        if not isinstance(vol, Volume):
            raise InputError(f"risk layer {name!r}: expected a Volume")
        wfv = np.eye(4) if world_from_volume is None else np.asarray(world_from_volume, float)
        world_from_ijk = wfv @ vol.ras_from_ijk
        self.layers[name] = _Layer(dist.astype(np.float32), np.linalg.inv(world_from_ijk), world_from_ijk, n)

    def add(self, name: str, mask: Volume, world_from_volume=None, exact_within_mm: float = 15.0) -> None:
        """Distance (mm) to the structure ``mask`` (non-zero voxels): exact within ``exact_within_mm`` of
        the structure's bounding box (the transform runs on that box only), beyond it the distance to
        the box (a lower bound, already farther than any penalty reaches)."""
        m = _mask_array(mask)
        vox = np.asarray(mask.voxel_mm, float)
        if m.any():
            idx = np.argwhere(m)
            lo, hi = idx.min(axis=0), idx.max(axis=0)
            pad = np.ceil(exact_within_mm / vox).astype(int)
            a, b = np.maximum(lo - pad, 0), np.minimum(hi + pad + 1, m.shape)
            box = tuple(slice(i, j) for i, j in zip(a, b))
            # outside the box: distance to the structure's bounding box
            gaps = [np.maximum(np.maximum(lo[k] - np.arange(n), np.arange(n) - hi[k]), 0) * vox[k]
                    for k, n in enumerate(m.shape)]
            dist = np.sqrt(gaps[0][:, None, None] ** 2 + gaps[1][None, :, None] ** 2
                           + gaps[2][None, None, :] ** 2).astype(np.float32)
            dist[box] = ndimage.distance_transform_edt(~m[box], sampling=vox)
            dist = np.maximum(dist - 0.5 * vox.min(), 0.0)
        else:
            dist = np.full(m.shape, FAR_MM, np.float32)
        self._register(name, mask, dist, world_from_volume, int(m.sum()))

    def add_depth(self, name: str, mask: Volume, world_from_volume=None) -> None:
        """Inside indicator of ``mask`` (holes filled), 1 inside / 0 outside; sampled trilinearly, > 0.5
        means inside (cheap: no distance transform)."""
        m = ndimage.binary_fill_holes(_mask_array(mask))
        self._register(name, mask, m.astype(np.float32), world_from_volume, int(m.sum()))

    def __contains__(self, name) -> bool:
        return name in self.layers

    def distance(self, name: str, points_ras, outside: float = FAR_MM) -> np.ndarray:
        """Trilinear sample of layer ``name`` at world RAS points (..., 3); ``outside`` beyond its grid."""
        pts = np.asarray(points_ras, float)
        shape = pts.shape[:-1]
        layer = self.layers[name]
        a = layer.ijk_from_world
        ijk = a[:3, :3] @ pts.reshape(-1, 3).T      # (3, N), contiguous as map_coordinates wants it
        ijk += a[:3, 3:4]
        vals = ndimage.map_coordinates(layer.distance_mm, ijk, order=1, mode="constant", cval=np.nan,
                                       prefilter=False)
        vals[np.isnan(vals)] = outside
        return vals.reshape(shape)

    def summary(self) -> dict:
        return {k: {"voxels": v.n_voxels, "shape": list(v.distance_mm.shape)} for k, v in self.layers.items()}


def csf_structures(image: Volume, brain_mask, deep_mm: float = 15.0, min_ventricle_ml: float = 1.0,
                   csf_dark: bool = True) -> tuple[Volume, Volume]:
    """(ventricles, sulci) uint8 Volumes on ``image``'s grid from a T1 (CSF dark; ``csf_dark=False`` for
    images where CSF is bright) inside ``brain_mask`` (same grid).

    CSF = the darkest of three Otsu classes inside the brain. Ventricles = CSF components reaching deeper
    than ``deep_mm`` below the brain surface with at least ``min_ventricle_ml`` ml; sulci = the rest of
    the CSF within ``deep_mm`` of the surface. An approximation for risk mapping, not a tissue model."""
    from skimage.filters import threshold_multiotsu
    data = np.asarray(image.data, np.float32)
    full = _mask_array(brain_mask)
    if full.shape != data.shape:
        raise InputError("csf_structures: brain mask not on the image grid")
    if not full.any():
        raise InputError("csf_structures: empty brain mask")
    # work on the brain's bounding box (+ a background border: every result below is unchanged)
    idx = np.argwhere(full)
    box = tuple(slice(max(i - 2, 0), min(j + 3, n)) for i, j, n in zip(idx.min(0), idx.max(0), full.shape))
    data, brain = data[box], ndimage.binary_fill_holes(full[box])
    vals = data[brain]
    if vals.size < 100:
        raise InputError("csf_structures: empty brain mask")
    t = threshold_multiotsu(vals, classes=3)
    csf = brain & ((data < t[0]) if csf_dark else (data > t[-1]))
    depth = ndimage.distance_transform_edt(brain, sampling=image.voxel_mm)
    lab, n = ndimage.label(ndimage.binary_opening(csf))  # ventricles: thick CSF (sulci are thin)
    ventricles = np.zeros(data.shape, bool)
    if n:
        idx = np.arange(1, n + 1)
        maxdepth = ndimage.maximum(depth, lab, idx)
        sizes = ndimage.sum(np.ones_like(depth), lab, idx) * float(np.prod(image.voxel_mm)) / 1000.0
        keep = np.zeros(n + 1, bool)
        keep[1:] = (np.asarray(maxdepth) > deep_mm) & (np.asarray(sizes) >= min_ventricle_ml)
        ventricles = keep[lab]
    sulci = csf & ~ndimage.binary_dilation(ventricles) & (depth <= deep_mm)
    out_v, out_s = np.zeros(full.shape, np.uint8), np.zeros(full.shape, np.uint8)
    out_v[box], out_s[box] = ventricles, sulci
    return (Volume(out_v, image.ras_from_ijk.copy(), "ventricles"),
            Volume(out_s, image.ras_from_ijk.copy(), "sulci"))
