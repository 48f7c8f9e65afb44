"""Brain mask from the (multi-echo RSS) magnitude, BET-like, plus phase-quality masking."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..volume import mask_box


def _ball(radius_mm: float, voxel_mm) -> np.ndarray:
    vox = np.asarray(voxel_mm, float)
    r = [max(1, int(np.floor(radius_mm / v))) for v in vox]
    g = [np.arange(-n, n + 1) * v for n, v in zip(r, vox)]
    x, y, z = np.meshgrid(*g, indexing="ij")
    return (x * x + y * y + z * z) <= radius_mm ** 2 + 1e-6


def _largest_component(m: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(m)
    if n <= 1:
        return m.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def fill_holes(m: np.ndarray) -> np.ndarray:
    """3-D hole filling by labelling the background (fast on large arrays): background components not
    touching the array border are holes."""
    lab, n = ndimage.label(~m)
    if n == 0:
        return m.copy()
    border = np.zeros(n + 1, bool)
    for a in range(3):
        for sl in (0, -1):
            border[np.unique(np.take(lab, sl, axis=a))] = True
    border[0] = True  # label 0 = the foreground itself
    return m | ~border[lab]


def _block_any(m: np.ndarray, f: int) -> np.ndarray:
    pad = [(0, (-n) % f) for n in m.shape]
    mp = np.pad(m, pad)
    s = mp.shape
    return mp.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def brain_mask(magnitude: np.ndarray, voxel_mm=(1, 1, 1), opening_mm: float = 4.0,
               threshold_fraction: float = 1.0) -> np.ndarray:
    """Brain mask (bool, voxel grid of ``magnitude``) from a 3-D magnitude image.

    Head = magnitude above an Otsu threshold of the (99.5th-percentile-clipped) image, at most 0.2 x
    the 95th percentile, times ``threshold_fraction``; the scalp is cut off by a morphological opening
    of ``opening_mm`` (the dark skull breaks the bridges; done on a ~2 mm grid for speed), keeping the
    largest component, then holes (dark veins, sinuses inside) are filled. No further erosion.
    """
    mag = np.asarray(magnitude, np.float32)
    if mag.ndim != 3:
        raise ValueError(f"brain_mask expects a 3-D magnitude, got shape {mag.shape}")
    vox = np.asarray(voxel_mm, float)
    sample = mag[::2, ::2, ::2] if mag.size > 1e6 else mag
    hi = np.percentile(sample, 99.5)
    if not np.isfinite(hi) or hi <= 0:
        return np.zeros(mag.shape, bool)
    clipped = np.minimum(sample, hi)
    # Otsu splits noise from tissue; when the field of view holds no background it would split
    # tissue classes instead, so the threshold never exceeds a fifth of the bright tissue signal
    thr = min(_otsu(clipped[clipped > 0.02 * hi]), 0.2 * np.percentile(sample, 95)) * threshold_fraction
    above = mag > thr
    f = max(1, int(round(2.0 / vox.min())))
    coarse = _block_any(above, f) > 0.5 if f > 1 else above
    cvox = vox * f
    head = fill_holes(coarse)
    ball = _ball(opening_mm, cvox)
    core = _largest_component(ndimage.binary_erosion(head, ball))
    if not core.any():
        core = _largest_component(head)
    grown = ndimage.binary_dilation(core, ball)
    # the rest on the box of the grown core plus a background margin (same components and holes)
    cbox = mask_box(grown, 1)
    box = tuple(slice(c.start * f, min(n, c.stop * f)) for c, n in zip(cbox, mag.shape))
    grown = grown[cbox]
    if f > 1:
        grown = np.repeat(np.repeat(np.repeat(grown, f, 0), f, 1), f, 2)
    grown = grown[tuple(slice(0, b.stop - b.start) for b in box)]
    out = np.zeros(mag.shape, bool)
    out[box] = fill_holes(_largest_component(grown & above[box]))
    return out


def extend_into_dropouts(mask: np.ndarray, magnitude: np.ndarray, noise_sigma: float, voxel_mm,
                         closing_mm: float = 20.0, min_snr: float = 6.0, min_depth_mm: float = 8.0) -> np.ndarray:
    """``mask`` grown into signal dropouts deep inside the head: voxels more than ``min_depth_mm``
    inside the morphological closing of ``mask`` by a ``closing_mm`` ball (the brain's outline without
    its notches; on a ~4 mm grid) whose ``magnitude`` exceeds ``min_snr`` x ``noise_sigma``, connected
    to ``mask``; holes filled. A magnitude threshold loses brain where receive coils cancel (an
    uncombined coil sum): background removal would then fit sources there, next to deep nuclei. The
    depth keeps the outline's own concavities (sulci, the skull base) out."""
    mask = np.asarray(mask, bool)
    mag = np.asarray(magnitude, np.float32)
    vox = np.asarray(voxel_mm, float)
    if not mask.any():
        return mask.copy()
    f = max(1, int(round(4.0 / vox.min())))
    coarse = _block_any(mask, f) > 0
    pad = int(np.ceil(closing_mm / (vox.min() * f))) + 1
    closed = ndimage.binary_closing(np.pad(coarse, pad), _ball(closing_mm, vox * f))
    closed = fill_holes(closed[pad:-pad, pad:-pad, pad:-pad])
    deep = ndimage.distance_transform_edt(np.pad(closed, 1), sampling=vox * f)[1:-1, 1:-1, 1:-1] > min_depth_mm
    if f > 1:
        deep = np.repeat(np.repeat(np.repeat(deep, f, 0), f, 1), f, 2)
    deep = deep[:mask.shape[0], :mask.shape[1], :mask.shape[2]]
    if not (deep & ~mask).any():
        return mask.copy()
    box = mask_box(mask | deep, 1)
    candidates = mask[box] | (deep[box] & (mag[box] > np.float32(min_snr * noise_sigma)))
    out = np.zeros(mask.shape, bool)
    out[box] = fill_holes(ndimage.binary_propagation(mask[box], mask=candidates))
    return out


def reliable_field(noise_hz: np.ndarray, mask: np.ndarray, max_noise_ratio: float = 5.0) -> np.ndarray:
    """Voxels of ``mask`` whose expected field noise is at most ``max_noise_ratio`` x its median in the
    mask: the field elsewhere (late-echo signal lost at air and bone boundaries, coil dropouts) is left
    out of the data terms of background removal and inversion, as unknown rather than wrong."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    noise = np.asarray(noise_hz)
    return mask & (noise <= np.float32(max_noise_ratio) * np.float32(np.median(noise[mask])))


def quality_mask(mask: np.ndarray, residual_rad: np.ndarray, max_residual_rad: float | None = None) -> np.ndarray:
    """Phase-quality masking: drop voxels of ``mask`` whose echo-fit residual (rad, magnitude-weighted
    RMS) exceeds ``max_residual_rad`` (default max(0.25, 8 x the median residual in the mask)) —
    skull, air boundaries, signal voids — keep the largest piece and fill holes inside it back."""
    mask = np.asarray(mask, bool)
    res = np.asarray(residual_rad)
    if max_residual_rad is None:
        max_residual_rad = max(0.25, 8.0 * float(np.median(res[mask]))) if mask.any() else 0.25
    # on the mask's box plus one voxel: the same components and holes as on the whole grid
    box = mask_box(mask, 1)
    m = mask[box]
    good = _largest_component(m & (res[box] <= max_residual_rad))
    out = np.zeros(mask.shape, bool)
    out[box] = fill_holes(good) & m
    return out
