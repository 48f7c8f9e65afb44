"""Forward models: susceptibility -> field (dipole convolution in k-space) and the multi-echo GRE signal.

Field in ppm of B0: ``F⁻¹[D(k)·F[χ]]`` with ``D(k) = 1/3 − (k·b̂)²/|k|²`` and ``D(0) = 0`` (the mean
field is undetermined); ``b̂`` is the unit B0 direction in the voxel (array) frame and ``k`` is in
cycles/mm along the voxel axes (the voxel size enters k). The convolution is periodic on the array
given: zero-pad (χ relative to the surrounding medium = 0) to avoid wrap-around.
Phase of echo j: ``φⱼ = φ₀ + 2π·γ̄·B0·field·1e-6·TEⱼ`` (γ̄ = 42.577 MHz/T): paramagnetic sources
give a positive frequency offset along B0.
"""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from ..io.gre import GAMMA_HZ_PER_T


def dipole_kernel(shape, voxel_mm, b0_dir_ijk, real: bool = True) -> np.ndarray:
    """D(k) on the (r)FFT grid of ``shape`` (float32), D(0) = 0."""
    b = np.asarray(b0_dir_ijk, float)
    b = b / np.linalg.norm(b)
    ks = []
    for d, n in enumerate(shape):
        f = sfft.rfftfreq(n) if (real and d == len(shape) - 1) else sfft.fftfreq(n)
        ks.append((f / float(voxel_mm[d])).astype(np.float32))
    kx, ky, kz = ks[0][:, None, None], ks[1][None, :, None], ks[2][None, None, :]
    k2 = kx * kx + ky * ky + kz * kz
    kb = kx * np.float32(b[0]) + ky * np.float32(b[1]) + kz * np.float32(b[2])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.float32(1.0 / 3.0) - kb * kb / k2
    d[0, 0, 0] = 0.0
    return d.astype(np.float32)


def dipole_field(chi: np.ndarray, voxel_mm, b0_dir_ijk, workers: int = -1) -> np.ndarray:
    """Field (ppm) of ``chi`` (ppm) by periodic k-space convolution on the array as given (float32)."""
    chi = np.asarray(chi, np.float32)
    spec = sfft.rfftn(chi, workers=workers)
    spec *= dipole_kernel(chi.shape, voxel_mm, b0_dir_ijk)
    return sfft.irfftn(spec, chi.shape, workers=workers).astype(np.float32)


def wrap_phase(phi: np.ndarray) -> np.ndarray:
    """Wrap to [-π, π)."""
    return (np.mod(phi + np.pi, 2.0 * np.pi) - np.pi).astype(np.float32)


def gre_signal(m0: np.ndarray, r2s: np.ndarray, field_ppm: np.ndarray, phase0: np.ndarray, te_s,
               b0_tesla: float, voxel_mm, snr: float, brain_mask: np.ndarray, rng: np.random.Generator):
    """Multi-echo complex GRE: magnitude and phase arrays (I, J, K, E) float32, and the noise SD.

    ``m0`` includes proton density and coil sensitivity; intravoxel dephasing from the field gradient
    (sinc per voxel axis) adds to the R2* decay; complex Gaussian noise of SD ``|S₁|_brain / snr``
    (mean first-echo magnitude in the brain divided by ``snr``).
    """
    te = np.asarray(te_s, float)
    hz_per_ppm = GAMMA_HZ_PER_T * b0_tesla * 1e-6
    grads = np.gradient(field_ppm.astype(np.float32), *[float(v) for v in voxel_mm])
    mag = np.empty(field_ppm.shape + (te.size,), np.float32)
    pha = np.empty_like(mag)
    sigma = None
    for e, t in enumerate(te):
        att = np.ones(field_ppm.shape, np.float32)
        for d, g in enumerate(grads):
            att *= np.abs(np.sinc(np.float32(hz_per_ppm * float(voxel_mm[d]) * t) * g)).astype(np.float32)
        amp = m0 * np.exp(-r2s * np.float32(t)) * att
        if sigma is None:
            inside = brain_mask > 0
            sigma = float(amp[inside].mean() / snr) if inside.any() else float(amp.mean() / snr)
        phi = phase0 + np.float32(2.0 * np.pi * hz_per_ppm * t) * field_ppm
        re = amp * np.cos(phi) + rng.normal(0.0, sigma, amp.shape).astype(np.float32)
        im = amp * np.sin(phi) + rng.normal(0.0, sigma, amp.shape).astype(np.float32)
        mag[..., e] = np.hypot(re, im)
        pha[..., e] = wrap_phase(np.arctan2(im, re))
    return mag, pha, sigma
