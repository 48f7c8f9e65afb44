"""Multi-echo phase: phase-offset removal (MCPC-3D-S) and magnitude/TE-weighted echo combination.

Phase model: phi_j = phi_0 + omega * TE_j (rad, TE in s), omega = 2*pi*field_Hz.
References: Eckstein K et al., MRM 2018;79:2996 (MCPC-3D-S); Dymerska B et al., MRM 2021 (ROMEO);
Bollmann S et al., QSM consensus, MRM 2024 (weighted fit w_j = |S_j|^2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TWO_PI = np.float32(2 * np.pi)


def wrap(x):
    return (x + np.pi) % (2 * np.pi) - np.pi


@dataclass
class EchoFit:
    field_hz: np.ndarray        # (I,J,K) float32, total field in Hz
    phase_offset_rad: np.ndarray  # (I,J,K) smooth phase offset phi_0 removed from every echo
    residual_rad: np.ndarray    # (I,J,K) magnitude-weighted RMS residual of the temporal fit (rad)
    noise_hz: np.ndarray        # (I,J,K) expected standard deviation of field_hz from thermal noise
    unwrapped_rad: np.ndarray   # (I,J,K,E) offset-free unwrapped phase of every echo


def _smooth_complex(z: np.ndarray, weight: np.ndarray, sigma_vox) -> np.ndarray:
    zr = ndimage.gaussian_filter((z * weight).real.astype(np.float32), sigma_vox)
    zi = ndimage.gaussian_filter((z * weight).imag.astype(np.float32), sigma_vox)
    return np.arctan2(zi, zr).astype(np.float32)


def combine_echoes(magnitude: np.ndarray, phase_rad: np.ndarray, te_s, mask: np.ndarray,
                   voxel_mm=(1, 1, 1), unwrapper=None, offset_sigma_mm: float = 2.5) -> EchoFit:
    """Total field (Hz) from multi-echo magnitude/phase (I,J,K,E), echo-combined BEFORE background
    removal.

    1. MCPC-3D-S: the echo-1/echo-2 phase difference (short effective TE, few wraps) is unwrapped
       spatially with ``unwrapper(phase, weight, mask, voxel_mm)`` (default: quality-guided, ROMEO
       family), giving omega; phi_0 = angle(S_1 exp(-i omega TE_1)) is smoothed (magnitude-weighted
       complex Gaussian, ``offset_sigma_mm``) and removed from every echo.
    2. Temporal unwrapping of each echo against the running estimate of omega (exact: 2*pi*n steps).
    3. Weighted least squares through the origin: omega = sum(w TE phi) / sum(w TE^2), w = |S|^2.
    With one echo the offset cannot be separated and omega = phi/TE (spatially unwrapped).
    """
    mag = np.asarray(magnitude, np.float32)
    ph = np.asarray(phase_rad, np.float32)
    te = np.asarray(te_s, np.float64)
    mask = np.asarray(mask, bool)
    if unwrapper is None:
        from .romeo import quality_unwrap as unwrapper
    n_e = ph.shape[3]
    vox = np.asarray(voxel_mm, float)
    sigma_vox = offset_sigma_mm / vox
    if n_e == 1:
        u = unwrapper(ph[..., 0], mag[..., 0], mask, vox)
        u = u - TWO_PI * np.round(np.mean(u[mask]) / TWO_PI) if mask.any() else u
        omega = u / np.float32(te[0])
        offset = np.zeros(ph.shape[:3], np.float32)
        unwrapped = u[..., None]
    else:
        z1 = mag[..., 0] * np.exp(1j * ph[..., 0])
        z2 = mag[..., 1] * np.exp(1j * ph[..., 1])
        dphi = np.angle(z2 * np.conj(z1)).astype(np.float32)
        du = unwrapper(dphi, np.sqrt(mag[..., 0] * mag[..., 1]), mask, vox)
        if mask.any():  # global 2*pi*n: the field is shimmed, its brain mean near 0
            du = du - TWO_PI * np.round(np.mean(du[mask]) / TWO_PI)
        omega = du / np.float32(te[1] - te[0])
        raw_offset = np.angle(z1 * np.exp(-1j * omega * np.float32(te[0]))).astype(np.float32)
        offset = _smooth_complex(np.exp(1j * raw_offset), mag[..., 0] * mask, sigma_vox)
        offset = np.where(mask, offset, raw_offset).astype(np.float32)
        unwrapped = np.empty(ph.shape, np.float32)
        num = np.zeros(ph.shape[:3], np.float32)
        den = np.zeros(ph.shape[:3], np.float32)
        for j in range(n_e):
            pj = wrap(ph[..., j] - offset).astype(np.float32)
            pred = omega * np.float32(te[j])
            uj = pred + wrap(pj - pred)
            unwrapped[..., j] = uj
            w = mag[..., j] ** 2
            num += w * np.float32(te[j]) * uj
            den += w * np.float32(te[j] ** 2)
            ok = den > 0
            omega = np.where(ok, num / np.where(ok, den, 1), omega).astype(np.float32)
    w = mag ** 2
    fit = omega[..., None] * te.astype(np.float32)
    wsum = np.maximum(w.sum(axis=3), 1e-30)
    residual = np.sqrt((w * (unwrapped - fit) ** 2).sum(axis=3) / wsum).astype(np.float32)
    sigma = _noise_sigma(mag, mask)
    noise_hz = (sigma / np.sqrt(np.maximum((w * (te.astype(np.float32) ** 2)).sum(axis=3), 1e-30))
                / TWO_PI).astype(np.float32)
    return EchoFit((omega / TWO_PI).astype(np.float32), offset, residual, noise_hz, unwrapped)


def _noise_sigma(mag: np.ndarray, mask: np.ndarray) -> float:
    """Thermal noise sigma from the background of echo 1 (Rayleigh: median = sigma*sqrt(2 ln 2)),
    else 1% of the median brain signal."""
    first = mag[..., 0]
    far = ~ndimage.binary_dilation(mask, iterations=3)
    bg = first[far]
    if bg.size > 100 and np.median(bg) > 0:
        return float(np.median(bg) / np.sqrt(2 * np.log(2)))
    return float(0.01 * np.median(first[mask])) if mask.any() else 1.0
