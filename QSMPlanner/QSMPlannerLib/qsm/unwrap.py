"""Spatial phase unwrapping.

``laplacian_unwrap``: FFT Laplacian unwrapping (Schofield & Zhu 2003) — robust, but not exact (it
changes values by a smooth harmonic-like error), so it is not fed into a temporal echo fit.
``quality_unwrap`` (in ``romeo.py``): exact, path-based, quality-guided region growing (ROMEO family).
"""
from __future__ import annotations

import numpy as np

from .dipole import kspace_grid


def laplacian_kernel(shape, voxel_mm) -> np.ndarray:
    """Discrete 7-point Laplacian (1/mm^2) in the rfft layout (eigenvalues, all <= 0)."""
    k0, k1, k2 = kspace_grid(shape, voxel_mm, real=True)
    vox = np.asarray(voxel_mm, float)
    lap = (2 * np.cos(2 * np.pi * k0 * vox[0]) - 2) / vox[0] ** 2 \
        + (2 * np.cos(2 * np.pi * k1 * vox[1]) - 2) / vox[1] ** 2 \
        + (2 * np.cos(2 * np.pi * k2 * vox[2]) - 2) / vox[2] ** 2
    return lap.astype(np.float32)


def _dct_laplacian_eig(shape, voxel_mm) -> np.ndarray:
    """Eigenvalues (1/mm^2, <= 0) of the 7-point Laplacian with mirror (Neumann) boundaries, DCT-II."""
    vox = np.asarray(voxel_mm, float)
    eig = np.zeros(shape, np.float64)
    for a, (n, v) in enumerate(zip(shape, vox)):
        e = (2 * np.cos(np.pi * np.arange(n) / n) - 2) / v ** 2
        eig = eig + e.reshape([-1 if b == a else 1 for b in range(3)])
    return eig.astype(np.float32)


def laplacian_unwrap(phase_rad: np.ndarray, voxel_mm=(1, 1, 1)) -> np.ndarray:
    """Laplacian-unwrapped phase (rad) of a 3-D wrapped phase (Schofield MA, Zhu Y, Opt Lett 2003).

    phi_u = lap^-1[ cos(phi) lap(sin phi) - sin(phi) lap(cos phi) ], with mirror boundaries (DCT), so
    no padding is needed. The constant is set so that phi_u matches the input modulo 2*pi on average.
    Not exact: values differ from the true phase by a smooth error, so it is not used for echo fits.
    """
    import scipy.fft as sfft
    phase = np.asarray(phase_rad, np.float32)
    if phase.ndim != 3:
        raise ValueError(f"laplacian_unwrap expects a 3-D phase, got shape {phase.shape}")
    eig = _dct_laplacian_eig(phase.shape, voxel_mm)

    def lap(x):
        return sfft.idctn(sfft.dctn(x, type=2, workers=2) * eig, type=2, workers=2)

    c, s = np.cos(phase), np.sin(phase)
    rhs = c * lap(s) - s * lap(c)
    inv = np.zeros_like(eig)
    nz = eig != 0
    inv[nz] = 1.0 / eig[nz]
    out = sfft.idctn(sfft.dctn(rhs, type=2, workers=2) * inv, type=2, workers=2).astype(np.float32)
    return out + np.float32(np.angle(np.mean(np.exp(1j * (phase - out)))))
