"""Background field removal: V-SHARP, RESHARP, PDF.

All take the total field (any unit, e.g. ppm), a brain mask and the voxel size (mm) and return
(local_field, eroded_mask) on the same grid; the field outside the returned mask is 0.
"""
from __future__ import annotations

import numpy as np

from .dipole import dipole_kernel, fast_shape, irfft3, pad_to, rfft3


def sphere_kernel(shape, voxel_mm, radius_mm) -> np.ndarray:
    """Normalised spherical mean-value kernel (image space, centred at index 0, periodic)."""
    vox = np.asarray(voxel_mm, float)
    rv = [int(np.ceil(radius_mm / v)) for v in vox]
    g = [np.arange(-r, r + 1) * v for r, v in zip(rv, vox)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    ball = (x * x + y * y + z * z) <= radius_mm ** 2
    k = np.zeros(shape, np.float32)
    ii = np.nonzero(ball)
    idx = tuple((ii[a] - rv[a]) % shape[a] for a in range(3))
    k[idx] = 1.0
    return k / k.sum()


def smv_kernel_k(shape, voxel_mm, radius_mm) -> np.ndarray:
    """rfft of the spherical mean-value kernel (real, since it is symmetric)."""
    return rfft3(sphere_kernel(shape, voxel_mm, radius_mm)).real.astype(np.float32)


def default_vsharp_radii(voxel_mm) -> list:
    """Radii (mm) 18*min(voxel) down to 2*max(voxel) in steps of 2*max(voxel) (as QSM.jl)."""
    vox = np.asarray(voxel_mm, float)
    r_max, step = 18 * vox.min(), 2 * vox.max()
    radii = list(np.arange(r_max, step - 1e-6, -step))
    return radii if radii else [step]


def vsharp(field: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), radii_mm=None,
           threshold: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP (Wu B et al., MRM 2012;67:137; Li W et al. 2011): variable-radius spherical mean value
    filtering, each voxel using the largest sphere that fits in the mask, then truncated-SVD
    deconvolution with the largest kernel (``threshold``). Returns (local_field, eroded_mask)."""
    mask = np.asarray(mask, bool)
    radii = sorted(radii_mm if radii_mm is not None else default_vsharp_radii(voxel_mm), reverse=True)
    vox = np.asarray(voxel_mm, float)
    pad = [int(np.ceil(radii[0] / v)) + 1 for v in vox]
    shape = fast_shape(mask.shape, pad)
    f, sl = pad_to(np.where(mask, field, 0).astype(np.float32), shape)
    m, _ = pad_to(mask.astype(np.float32), shape)
    ff, fm = rfft3(f), rfft3(m)
    hp = np.zeros(shape, np.float32)
    done = np.zeros(shape, bool)
    s_first = None
    for r in radii:
        s = smv_kernel_k(shape, vox, r)
        eroded = irfft3(fm * s, shape) > 0.999
        new = eroded & ~done
        if new.any():
            if s_first is None:  # deconvolve with the largest kernel in use
                s_first = s
            hp[new] = (f - irfft3(ff * s, shape))[new]
            done |= new
    del ff, fm
    if s_first is None:
        return np.zeros(mask.shape, np.float32), np.zeros(mask.shape, bool)
    one_minus = 1.0 - s_first
    inv = np.zeros_like(one_minus)
    ok = np.abs(one_minus) > threshold
    inv[ok] = 1.0 / one_minus[ok]
    local = irfft3(rfft3(hp) * inv, shape)
    local = np.where(done, local, 0)[sl].astype(np.float32)
    return local, done[sl]
