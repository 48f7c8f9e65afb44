"""Dipole inversion: local field (ppm) -> susceptibility (ppm). B0 direction in the voxel frame."""
from __future__ import annotations

import numpy as np

from .dipole import dipole_kernel, fast_shape, irfft3, pad_to, rfft3


def _pad_for(shape, pad):
    if pad is None:
        pad = tuple(max(8, s // 4) for s in shape)
    return fast_shape(shape, pad)


def tkd(local_field_ppm: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), b0_dir_ijk=(0, 0, 1),
        threshold: float = 0.15, pad=None) -> np.ndarray:
    """Truncated k-space division (Shmueli K et al., MRM 2009;62:1510): 1/D where |D| > threshold,
    sign(D)/threshold elsewhere. Returns chi (ppm) inside ``mask`` (0 outside)."""
    mask = np.asarray(mask, bool)
    shape = _pad_for(mask.shape, pad)
    f, sl = pad_to(np.where(mask, local_field_ppm, 0).astype(np.float32), shape)
    d = dipole_kernel(shape, voxel_mm, b0_dir_ijk)
    inv = np.where(np.abs(d) > threshold, 1.0 / np.where(d == 0, 1, d),
                   np.sign(d) / threshold).astype(np.float32)
    inv[0, 0, 0] = 0.0
    chi = irfft3(rfft3(f) * inv, shape)[sl]
    return np.where(mask, chi, 0).astype(np.float32)


def _grad_eig(shape, voxel_mm):
    """rfft-layout eigenvalues of the forward differences (1/mm) along i, j, k."""
    from .dipole import kspace_grid
    ks = kspace_grid(shape, voxel_mm, real=True)
    return [((np.exp(2j * np.pi * k * v) - 1) / v).astype(np.complex64) for k, v in zip(ks, voxel_mm)]


def _grad(x, vox):
    return [(np.roll(x, -1, axis=a) - x) / np.float32(vox[a]) for a in range(3)]


def _div_t(v, vox):
    """Adjoint of the forward differences, G^T v."""
    out = np.zeros_like(v[0])
    for a in range(3):
        out += (np.roll(v[a], 1, axis=a) - v[a]) / np.float32(vox[a])
    return out


def tv_admm(local_field_ppm: np.ndarray, mask: np.ndarray, voxel_mm=(1, 1, 1), b0_dir_ijk=(0, 0, 1),
            lam: float | None = None, rho: float | None = None, max_iter: int = 60, tol: float = 2e-3,
            pad=None, progress=None, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Total-variation regularised dipole inversion by ADMM (Bilgic B et al., MRM 2014;72:1444;
    Milovic C et al., FANSI 2018):  min_chi 1/2 ||D chi - f||^2 + lam ||grad chi||_1,
    the chi-update closed form in k-space (2 FFTs per iteration). Returns chi (ppm) in ``mask``."""
    mask = np.asarray(mask, bool)
    vox = np.asarray(voxel_mm, float)
    lam = 3e-4 if lam is None else float(lam)
    rho = 100 * lam if rho is None else float(rho)
    shape = _pad_for(mask.shape, pad)
    f, sl = pad_to(np.where(mask, local_field_ppm, 0).astype(np.float32), shape)
    d = dipole_kernel(shape, vox, b0_dir_ijk)
    eig = _grad_eig(shape, vox)
    lap = sum((e.real ** 2 + e.imag ** 2) for e in eig).astype(np.float32)
    denom = (d * d + np.float32(rho) * lap).astype(np.float32)
    denom[0, 0, 0] = 1.0
    dtf = rfft3(f) * d
    chi = irfft3(dtf / np.where(d * d + lap > 0, d * d + np.float32(0.01) * lap, 1), shape).astype(np.float32)
    z = _grad(chi, vox)
    u = [np.zeros_like(chi) for _ in range(3)]
    thr = np.float32(lam / rho)
    for it in range(max_iter):
        v = [zi - ui for zi, ui in zip(z, u)]
        chi_new = irfft3((dtf + np.float32(rho) * rfft3(_div_t(v, vox))) / denom, shape).astype(np.float32)
        change = np.linalg.norm(chi_new - chi) / max(np.linalg.norm(chi_new), 1e-12)
        chi = chi_new
        g = _grad(chi, vox)
        for a in range(3):
            t = g[a] + u[a]
            z[a] = np.sign(t) * np.maximum(np.abs(t) - thr, 0)
            u[a] = t - z[a]
        if progress is not None:
            progress.update((it + 1) / max_iter, f"TV iteration {it + 1}")
        if change < tol:
            break
    return np.where(mask, chi[sl], 0).astype(np.float32)
