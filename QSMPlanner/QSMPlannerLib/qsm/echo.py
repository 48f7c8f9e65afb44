"""Multi-echo phase: phase-offset removal (MCPC-3D-S) and magnitude/TE-weighted echo combination.

Phase model: phi_j = phi_0 + omega * TE_j (rad, TE in s), omega = 2*pi*field_Hz.
References: Eckstein K et al., MRM 2018;79:2996 (MCPC-3D-S); Dymerska B et al., MRM 2021 (ROMEO);
Bollmann S et al., QSM consensus, MRM 2024 (weighted fit w_j = |S_j|^2).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
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
    unwrapped_box: np.ndarray   # (i,j,k,E) offset-free unwrapped phase of every echo inside ``box``
    box: tuple                  # slices of the mask's box in the (I,J,K) grid

    @property
    def unwrapped_rad(self) -> np.ndarray:
        """(I,J,K,E) offset-free unwrapped phase of every echo (0 outside the box)."""
        out = np.zeros(self.field_hz.shape + self.unwrapped_box.shape[3:], np.float32)
        out[self.box] = self.unwrapped_box
        return out


@numba.njit(parallel=True, cache=True, fastmath=True)
def _phase_difference(ph):
    """wrap(phi_2 - phi_1) per voxel (the echo-2/echo-1 Hermitian product's angle)."""
    ni, nj, nk, _ = ph.shape
    out = np.empty((ni, nj, nk), np.float32)
    for i in numba.prange(ni):
        for j in range(nj):
            for k in range(nk):
                d = ph[i, j, k, 1] - ph[i, j, k, 0]
                out[i, j, k] = (d + np.pi) % (2 * np.pi) - np.pi
    return out


@numba.njit(parallel=True, cache=True, fastmath=True)
def _raw_offset(ph0, omega, te0, mag0, mask):
    """phi_0 = wrap(phi_1 - omega TE_1) per voxel, and its magnitude-weighted unit phasor inside the mask
    (real and imaginary parts)."""
    ni, nj, nk = omega.shape
    out = np.empty((ni, nj, nk), np.float32)
    re = np.empty((ni, nj, nk), np.float32)
    im = np.empty((ni, nj, nk), np.float32)
    for i in numba.prange(ni):
        for j in range(nj):
            for k in range(nk):
                d = ph0[i, j, k] - omega[i, j, k] * te0
                p = np.float32(d - 2 * np.pi * np.floor((d + np.pi) * (0.5 / np.pi)))  # wrap(d)
                out[i, j, k] = p
                w = mag0[i, j, k] if mask[i, j, k] else np.float32(0)
                re[i, j, k] = w * np.cos(p)
                im[i, j, k] = w * np.sin(p)
    return out, re, im


@numba.njit(parallel=True, cache=True, fastmath=True)
def _temporal_fit(ph, mag, te, offset, omega0, unwrapped, omega, residual, inv_sqrt_den):
    """Per voxel: remove the offset, unwrap each echo against the running weighted-fit estimate of
    omega (2*pi steps only), weighted LSQ through the origin (w = |S|^2), residual and 1/sqrt(sum w TE^2)."""
    ni, nj, nk, ne = ph.shape
    for i in numba.prange(ni):
        for j in range(nj):
            for k in range(nk):
                om = omega0[i, j, k]
                off = offset[i, j, k]
                num = 0.0
                den = 0.0
                wsum = 0.0
                for e in range(ne):
                    p = ph[i, j, k, e] - off
                    pred = om * te[e]
                    dd = p - pred
                    u = pred + dd - 2 * np.pi * np.floor((dd + np.pi) * (0.5 / np.pi))  # wrap(dd)
                    unwrapped[i, j, k, e] = u
                    w = mag[i, j, k, e] * mag[i, j, k, e]
                    num += w * te[e] * u
                    den += w * te[e] * te[e]
                    wsum += w
                    if den > 0:
                        om = num / den
                omega[i, j, k] = om
                r = 0.0
                for e in range(ne):
                    w = mag[i, j, k, e] * mag[i, j, k, e]
                    d = unwrapped[i, j, k, e] - om * te[e]
                    r += w * d * d
                residual[i, j, k] = np.sqrt(r / wsum) if wsum > 0 else np.pi
                inv_sqrt_den[i, j, k] = 1.0 / np.sqrt(den) if den > 0 else 0.0


def _smoothed_angle(re: np.ndarray, im: np.ndarray, sigma_vox) -> np.ndarray:
    """angle of the Gaussian-smoothed phasor; both parts filtered at once (ndimage releases the GIL)."""
    with ThreadPoolExecutor(1) as pool:
        im_s = pool.submit(ndimage.gaussian_filter, im, sigma_vox)
        re_s = ndimage.gaussian_filter(re, sigma_vox)
        return np.arctan2(im_s.result(), re_s)


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
    from ..volume import mask_box
    mask = np.asarray(mask, bool)
    full_shape = mask.shape
    te = np.asarray(te_s, np.float64)
    if unwrapper is None:
        from .romeo import quality_unwrap as unwrapper
    vox = np.asarray(voxel_mm, float)
    sigma_vox = offset_sigma_mm / vox
    sigma = _noise_sigma(np.asarray(magnitude)[..., 0], mask)
    box = mask_box(mask, int(np.ceil(3 * sigma_vox.max())))  # everything happens in the mask's box
    mag = np.asarray(magnitude, np.float32)[box]
    ph = np.asarray(phase_rad, np.float32)[box]
    m = mask[box]
    n_e = ph.shape[3]
    te32 = te.astype(np.float32)
    if n_e == 1:
        u = unwrapper(ph[..., 0], mag[..., 0], m, vox)
        if m.any():
            u = u - TWO_PI * np.round(np.mean(u[m]) / TWO_PI)
        omega0 = (u / te32[0]).astype(np.float32)
        offset = np.zeros(ph.shape[:3], np.float32)
    else:
        dphi = _phase_difference(ph)
        du = unwrapper(dphi, np.sqrt(mag[..., 0] * mag[..., 1]), m, vox)
        if m.any():  # global 2*pi*n: the field is shimmed, its brain mean near 0
            du = du - TWO_PI * np.round(np.mean(du[m]) / TWO_PI)
        omega0 = (du / np.float32(te[1] - te[0])).astype(np.float32)
        raw_offset, re, im = _raw_offset(ph[..., 0], omega0, te32[0], mag[..., 0], m)
        offset = np.where(m, _smoothed_angle(re, im, sigma_vox), raw_offset).astype(np.float32)
    shape = ph.shape[:3]
    unwrapped = np.empty(ph.shape, np.float32)
    omega = np.empty(shape, np.float32)
    residual = np.empty(shape, np.float32)
    inv_sqrt_den = np.empty(shape, np.float32)
    _temporal_fit(ph, mag, te32, offset, omega0, unwrapped, omega, residual, inv_sqrt_den)

    def full(a, fill=0.0):
        out = np.zeros(full_shape, np.float32) if fill == 0 else np.full(full_shape, fill, np.float32)
        out[box] = a
        return out

    return EchoFit(full(omega / TWO_PI), full(offset), full(residual, np.pi),
                   full(inv_sqrt_den * np.float32(sigma / (2 * np.pi))), unwrapped, box)


def _noise_sigma(first_echo: np.ndarray, mask: np.ndarray) -> float:
    """Thermal noise sigma from the darkest quarter outside the mask of echo 1 (Rayleigh background:
    25th percentile = 0.7585 sigma), else 1% of the median brain signal."""
    sub = (slice(None, None, 2),) * 3
    first, m = np.asarray(first_echo)[sub], np.asarray(mask)[sub]
    bg = first[~m]
    if bg.size > 100 and np.percentile(bg, 25) > 0:
        return float(np.percentile(bg, 25) / 0.7585)
    return float(0.01 * np.median(first[m])) if m.any() else 1.0
