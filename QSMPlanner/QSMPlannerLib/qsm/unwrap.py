"""Spatial phase unwrapping.

``laplacian_unwrap``: FFT Laplacian unwrapping (Schofield & Zhu 2003) — robust, but not exact (it
changes values by a smooth harmonic-like error), so it is not fed into a temporal echo fit.
``quality_unwrap`` (in ``romeo.py``): exact, path-based, quality-guided region growing (ROMEO family).
"""
from __future__ import annotations

import numpy as np

from .dipole import fast_shape, irfft3, kspace_grid, pad_slices, rfft3


def laplacian_kernel(shape, voxel_mm) -> np.ndarray:
    """Discrete 7-point Laplacian (1/mm^2) in the rfft layout (eigenvalues, all <= 0)."""
    k0, k1, k2 = kspace_grid(shape, voxel_mm, real=True)
    vox = np.asarray(voxel_mm, float)
    lap = (2 * np.cos(2 * np.pi * k0 * vox[0]) - 2) / vox[0] ** 2 \
        + (2 * np.cos(2 * np.pi * k1 * vox[1]) - 2) / vox[1] ** 2 \
        + (2 * np.cos(2 * np.pi * k2 * vox[2]) - 2) / vox[2] ** 2
    return lap.astype(np.float32)


def laplacian_unwrap(phase_rad: np.ndarray, voxel_mm=(1, 1, 1), pad: int = 8) -> np.ndarray:
    """Laplacian-unwrapped phase (rad) of a 3-D wrapped phase; mean set to that of the input.

    phi_u = lap^-1[ cos(phi) lap(sin phi) - sin(phi) lap(cos phi) ]. Zero-padded by ``pad`` voxels
    (mirror padding would be better at the edges; inside a brain mask away from the edges this holds).
    """
    phase = np.asarray(phase_rad, np.float32)
    if phase.ndim != 3:
        raise ValueError(f"laplacian_unwrap expects a 3-D phase, got shape {phase.shape}")
    shape = fast_shape(phase.shape, (pad,) * 3)
    sl = pad_slices(phase.shape, shape)
    # reflected fill of the pad keeps the padded border from creating fake residues
    p = np.pad(phase, [(s.start, n - s.stop) for s, n in zip(sl, shape)], mode="reflect")
    lap = laplacian_kernel(shape, voxel_mm)
    c, s = np.cos(p), np.sin(p)
    lap_phi = c * irfft3(rfft3(s) * lap, shape) - s * irfft3(rfft3(c) * lap, shape)
    inv = np.zeros_like(lap)
    nz = lap != 0
    inv[nz] = 1.0 / lap[nz]
    out = irfft3(rfft3(lap_phi) * inv, shape)[sl].astype(np.float32)
    # restore the constant lost with k = 0 (defined up to 2*pi*n anyway)
    return out + np.float32(np.angle(np.mean(np.exp(1j * (phase - out)))))
