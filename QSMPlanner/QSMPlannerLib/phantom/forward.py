"""Forward models: susceptibility -> field (dipole convolution in k-space) and the multi-echo GRE signal.

Field in ppm of B0: ``F⁻¹[D(k)·F[χ]]`` with ``D(k) = 1/3 − (k·b̂)²/|k|²`` and ``D(0) = 0`` (the mean
field is undetermined); ``b̂`` is the unit B0 direction in the voxel (array) frame and ``k`` is in
cycles/mm along the voxel axes (the voxel size enters k). The convolution is periodic on the array
given: zero-pad (χ relative to the surrounding medium = 0) to avoid wrap-around.
Phase of echo j: ``φⱼ = φ₀ + 2π·γ̄·B0·field·1e-6·TEⱼ`` (γ̄ = 42.577 MHz/T): paramagnetic sources
give a positive frequency offset along B0.
"""
from __future__ import annotations

import numba
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


@numba.njit(cache=True, inline="always")
def _sinc_abs(x):
    x = np.float32(np.pi) * x
    return abs(np.sin(x) / x) if abs(x) > np.float32(1e-6) else np.float32(1.0)


@numba.njit(cache=True, inline="always")
def _splitmix64(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    z = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _normal_pair(key, index):
    """Two independent standard normals for (key, index): counter-based, so the result does not
    depend on how the voxels are split between threads (deterministic per seed)."""
    a = _splitmix64(key ^ (np.uint64(2) * index))
    b = _splitmix64(a ^ np.uint64(0xD1B54A32D192ED03))
    u1 = (np.float32(a >> np.uint64(40)) + np.float32(0.5)) * np.float32(1.0 / 16777216.0)
    u2 = np.float32(b >> np.uint64(40)) * np.float32(2.0 * np.pi / 16777216.0)
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    return r * np.cos(u2), r * np.sin(u2)


@numba.njit(parallel=True, cache=True, fastmath=True)
def _echo_kernel(m0, r2s, field, phase0, gx, gy, gz, t, hz_per_ppm, vox, noise_key, sigma, mag, pha):
    """One echo, single-precision arithmetic; complex Gaussian noise of SD ``sigma`` drawn from a
    counter-based generator keyed by ``noise_key`` (uint64)."""
    ni, nj, nk = m0.shape
    cx = np.float32(hz_per_ppm * vox[0] * t)
    cy = np.float32(hz_per_ppm * vox[1] * t)
    cz = np.float32(hz_per_ppm * vox[2] * t)
    w = np.float32(2.0 * np.pi * hz_per_ppm * t)
    t32 = np.float32(t)
    s32 = np.float32(sigma)
    pi32 = np.float32(np.pi)
    for i in numba.prange(ni):
        for j in range(nj):
            for k in range(nk):
                att = _sinc_abs(cx * gx[i, j, k]) * _sinc_abs(cy * gy[i, j, k]) * _sinc_abs(cz * gz[i, j, k])
                amp = m0[i, j, k] * np.exp(-r2s[i, j, k] * t32) * att
                phi = phase0[i, j, k] + w * field[i, j, k]
                n1, n2 = _normal_pair(noise_key, np.uint64((i * nj + j) * nk + k))
                re = amp * np.cos(phi) + s32 * n1
                im = amp * np.sin(phi) + s32 * n2
                mag[i, j, k] = np.sqrt(re * re + im * im)
                p = np.arctan2(im, re)
                if p >= pi32:
                    p -= np.float32(2.0) * pi32
                pha[i, j, k] = p


def gre_signal(m0: np.ndarray, r2s: np.ndarray, field_ppm: np.ndarray, phase0: np.ndarray, te_s,
               b0_tesla: float, voxel_mm, snr: float, brain_mask: np.ndarray, rng: np.random.Generator):
    """Multi-echo complex GRE: magnitude and phase arrays (I, J, K, E) float32, and the noise SD.

    ``m0`` includes proton density and coil sensitivity; intravoxel dephasing from the field gradient
    (|sinc| per voxel axis) adds to the R2* decay; complex Gaussian noise of SD ``|S₁|_brain / snr``
    (mean noise-free first-echo magnitude in the brain, without intravoxel dephasing, over ``snr``). Phase in [-π, π).
    """
    te = np.asarray(te_s, float)
    hz_per_ppm = GAMMA_HZ_PER_T * b0_tesla * 1e-6
    vox = np.asarray(voxel_mm, np.float64)
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
    m0, r2s, field_ppm, phase0 = f32(m0), f32(r2s), f32(field_ppm), f32(phase0)
    gx, gy, gz = [f32(g) for g in np.gradient(field_ppm, *[float(v) for v in vox])]
    shape = field_ppm.shape
    mag = np.empty(shape + (te.size,), np.float32)
    pha = np.empty_like(mag)
    tmp_m, tmp_p = np.empty(shape, np.float32), np.empty(shape, np.float32)
    inside = np.asarray(brain_mask) > 0
    if not inside.any():
        inside = np.ones(shape, bool)
    ref = m0[inside] * np.exp(-r2s[inside] * np.float32(te[0]))   # noise-free first echo (no dephasing)
    sigma = float(ref.mean() / snr)
    del ref
    for e, t in enumerate(te):
        key = np.uint64(rng.integers(0, 2 ** 63, dtype=np.int64))
        _echo_kernel(m0, r2s, field_ppm, phase0, gx, gy, gz, float(t), hz_per_ppm, vox, key, sigma,
                     tmp_m, tmp_p)
        mag[..., e] = tmp_m
        pha[..., e] = tmp_p
    return mag, pha, sigma
