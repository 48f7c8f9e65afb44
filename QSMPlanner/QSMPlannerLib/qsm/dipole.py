"""Dipole kernel and the forward field model, with B0 in the voxel (array) frame.

Local field (ppm of B0) = F^-1[ D(k) F[chi] ],  D(k) = 1/3 - (k.b)^2/|k|^2,  D(0) := 0.
``b0_dir_ijk`` is the unit B0 direction in the voxel frame (components along the i, j, k axes, which
are orthonormal in direction); ``voxel_mm`` the voxel size, so anisotropic voxels enter k correctly.
Reference: Salomir R et al. 2003; Marques JP, Bowtell R 2005.
"""
from __future__ import annotations

import numba
import numpy as np
import scipy.fft as sfft

FFT_WORKERS = 2


def _unit(b0_dir_ijk) -> np.ndarray:
    b = np.asarray(b0_dir_ijk, float).reshape(3)
    n = np.linalg.norm(b)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"B0 direction must be a non-zero 3-vector, got {b0_dir_ijk}")
    return b / n


def kspace_grid(shape, voxel_mm, real: bool = True):
    """k-space coordinates (cycles/mm) along i, j, k, broadcastable; last axis halved if ``real``."""
    shape = tuple(int(s) for s in shape)
    vox = np.asarray(voxel_mm, float)
    k0 = sfft.fftfreq(shape[0], vox[0]).reshape(-1, 1, 1)
    k1 = sfft.fftfreq(shape[1], vox[1]).reshape(1, -1, 1)
    k2 = (sfft.rfftfreq if real else sfft.fftfreq)(shape[2], vox[2]).reshape(1, 1, -1)
    return k0, k1, k2


def dipole_kernel(shape, voxel_mm, b0_dir_ijk=(0, 0, 1), real: bool = True,
                  dtype=np.float32) -> np.ndarray:
    """Dipole kernel D(k) on an FFT grid of ``shape`` (rfft layout if ``real``); D(0) = 0."""
    k0, k1, k2 = (k.ravel() for k in kspace_grid(shape, voxel_mm, real))
    out = np.empty((k0.size, k1.size, k2.size), dtype)
    _dipole_fill(k0, k1, k2, _unit(b0_dir_ijk), out)
    return out


@numba.njit(parallel=True, cache=True)
def _dipole_fill(k0, k1, k2, b, out):
    """out = 1/3 - (k.b)^2 / |k|^2 (float64 arithmetic), 0 at k = 0."""
    for i in numba.prange(k0.size):
        for j in range(k1.size):
            a2 = k0[i] * k0[i] + k1[j] * k1[j]
            ab = k0[i] * b[0] + k1[j] * b[1]
            for k in range(k2.size):
                k2sum = a2 + k2[k] * k2[k]
                kb = ab + k2[k] * b[2]
                out[i, j, k] = 1.0 / 3.0 - kb * kb / k2sum if k2sum > 0 else 0.0


def fast_shape(shape, pad=(0, 0, 0)) -> tuple:
    """Padded FFT-friendly shape: each size + 2*pad rounded up to a fast FFT length."""
    return tuple(sfft.next_fast_len(int(s) + 2 * int(p), real=True) for s, p in zip(shape, pad))


def pad_slices(shape_in, shape_out) -> tuple:
    """Slices of the centred ``shape_in`` block inside ``shape_out``."""
    return tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(shape_out, shape_in))


def pad_to(x: np.ndarray, shape) -> tuple[np.ndarray, tuple]:
    """Zero-pad ``x`` (centred) to ``shape``; returns the array and the slices to crop back."""
    sl = pad_slices(x.shape[:3], shape)
    out = np.zeros(tuple(shape) + x.shape[3:], dtype=x.dtype)
    out[sl] = x
    return out, sl


def rfft3(x):
    return sfft.rfftn(x, axes=(0, 1, 2), workers=FFT_WORKERS)


def irfft3(x, shape):
    return sfft.irfftn(x, s=shape, axes=(0, 1, 2), workers=FFT_WORKERS)


def forward_field(chi_ppm: np.ndarray, voxel_mm, b0_dir_ijk=(0, 0, 1), pad=None) -> np.ndarray:
    """Field (ppm of B0) created by ``chi_ppm`` through the dipole kernel, zero-padded by ``pad``
    voxels per side (default: half the size, to suppress periodic wrap-around)."""
    chi = np.asarray(chi_ppm, np.float32)
    if pad is None:
        pad = tuple(s // 2 for s in chi.shape)
    shape = fast_shape(chi.shape, pad)
    x, sl = pad_to(chi, shape)
    d = dipole_kernel(shape, voxel_mm, b0_dir_ijk)
    return irfft3(rfft3(x) * d, shape)[sl].astype(np.float32)


def ppm_to_hz(field_ppm, b0_tesla: float):
    from ..io.gre import GAMMA_HZ_PER_T
    return np.asarray(field_ppm) * 1e-6 * GAMMA_HZ_PER_T * b0_tesla


def hz_to_ppm(field_hz, b0_tesla: float):
    from ..io.gre import GAMMA_HZ_PER_T
    return np.asarray(field_hz) / (1e-6 * GAMMA_HZ_PER_T * b0_tesla)


def sphere_chi(shape, voxel_mm, center_mm, radius_mm, chi_ppm=1.0, supersample: int = 3) -> np.ndarray:
    """A uniform sphere with partial-volume edges (``supersample``^3 subsamples per voxel)."""
    vox = np.asarray(voxel_mm, float)
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    idx = [np.arange(n) for n in shape]
    out = np.zeros(shape, np.float32)
    for a in offs:
        for b in offs:
            for c in offs:
                x = ((idx[0] + a) * vox[0] - center_mm[0]).reshape(-1, 1, 1)
                y = ((idx[1] + b) * vox[1] - center_mm[1]).reshape(1, -1, 1)
                z = ((idx[2] + c) * vox[2] - center_mm[2]).reshape(1, 1, -1)
                out += (x * x + y * y + z * z <= radius_mm ** 2)
    return out * np.float32(chi_ppm / supersample ** 3)


def sphere_field_analytic(shape, voxel_mm, center_mm, radius_mm, chi_ppm, b0_dir_ijk) -> np.ndarray:
    """Exact field (ppm) of a uniform sphere in vacuum-like background with the Lorentz correction
    (consistent with D(0) = 0 convention: inside 0, outside chi a^3/3 (3cos^2-1)/r^3)."""
    vox = np.asarray(voxel_mm, float)
    b = _unit(b0_dir_ijk)
    g = [np.arange(n) * v - c for n, v, c in zip(shape, vox, center_mm)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    r2 = x * x + y * y + z * z
    r = np.sqrt(r2)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = (x * b[0] + y * b[1] + z * b[2]) / r
        out = chi_ppm * radius_mm ** 3 / 3.0 * (3 * cos ** 2 - 1) / r ** 3
    out[r <= radius_mm] = 0.0
    return out.astype(np.float32)
