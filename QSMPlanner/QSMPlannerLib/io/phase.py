"""Detect how a phase image is scaled and convert it to radians in [-pi, pi).

Known scalings, tried in this order on the joint value range [lo, hi] of all echoes:
  radians          [-pi, pi]                 (spanning at least pi)
  radians 0..2pi   [0, 2pi]                  wrapped
  mrad             [-1000pi, 1000pi]         x / 1000
  [-4096, 4095]    Siemens DICOM after rescale: x * pi / 4096
  [0, 4095]        12-bit stored values without rescale: x * 2pi / 4096 - pi
  other range      symmetric about 0 or starting at 0, with the near-flat histogram of wrapped phase:
                   (x - lo) * 2pi / period - pi, period = hi - lo + one quantisation step
Anything else (a constant image, unwrapped phase, a magnitude image given as phase) is rejected.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

TWO_PI = 2.0 * np.pi
_HIST_BINS = 8
_MIN_BIN_FRACTION = 0.02   # wrapped phase fills every eighth of its range (uniform would be 0.125)


@dataclass
class PhaseScaling:
    kind: str          # "radians", "radians 0..2pi", "mrad", "[-4096, 4095]", "[0, 4095]", "rescaled"
    scale: float       # radians = wrap(scale * (x - offset) + shift)
    offset: float
    shift: float
    lo: float
    hi: float

    def describe(self) -> str:
        rng = f"values in [{self.lo:.6g}, {self.hi:.6g}]"
        if self.kind == "radians":
            return f"radians ({rng}); used as is"
        if self.kind == "rescaled":
            return (f"unrecognised range {rng}, looks like wrapped phase: rescaled linearly to "
                    f"[-pi, pi) (period {TWO_PI / self.scale:.6g})")
        return f"{self.kind} ({rng}); converted to radians"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Radians in [-pi, pi) (float32 for radian input already in range, else float64)."""
        x = np.asarray(x)
        if self.kind == "radians" and self.lo >= -np.pi and self.hi < np.pi:
            return x.astype(np.float32, copy=True)   # already wrapped: no float64 round trip
        return wrap(self.scale * (x.astype(np.float64) - self.offset) + self.shift)


def wrap(phi: np.ndarray) -> np.ndarray:
    """Wrap to [-pi, pi)."""
    return np.mod(np.asarray(phi) + np.pi, TWO_PI) - np.pi


_F32_BOTTOM = np.nextafter(np.float32(-np.pi), np.float32(0))   # smallest float32 >= -pi
_F32_TOP = np.float32(np.pi)                                     # float32(pi) > pi


def to_float32_wrapped(phi: np.ndarray) -> np.ndarray:
    """float32 phase strictly inside [-pi, pi) also after rounding to float32 (in place if float32)."""
    p = np.asarray(phi, dtype=np.float32)
    p[p >= _F32_TOP] = _F32_BOTTOM      # pi (after rounding) is -pi
    p[p < _F32_BOTTOM] = _F32_BOTTOM
    return p


def _sample(arrays, n=2_000_000) -> np.ndarray:
    flat = np.concatenate([np.asarray(a).reshape(-1) for a in arrays])
    if flat.size > n:
        flat = flat[:: flat.size // n + 1]
    return flat.astype(np.float64)


def _quantisation_step(sample: np.ndarray) -> float:
    u = np.unique(sample)
    if u.size < 2 or u.size > 65536:
        return 0.0
    d = np.diff(u)
    step = float(np.median(d))
    # a lattice: nearly every gap is the step (or a multiple of it)
    return step if np.mean(np.abs(d / step - np.round(d / step)) < 0.05) > 0.95 else 0.0


def _looks_wrapped(sample: np.ndarray, lo: float, hi: float) -> tuple[bool, str]:
    span = hi - lo
    symmetric = abs(lo + hi) <= 0.03 * span
    from_zero = -1e-9 <= lo <= 0.03 * span
    if not (symmetric or from_zero):
        return False, "the range is neither symmetric about 0 nor starting at 0"
    nz = sample[sample != 0]
    values = nz if nz.size > 0.1 * sample.size else sample
    hist, _ = np.histogram(values, bins=_HIST_BINS, range=(lo, hi))
    frac = hist / max(values.size, 1)
    if frac.min() < _MIN_BIN_FRACTION:
        return False, (f"the values do not fill the range like wrapped phase (an eighth of the range "
                       f"holds only {100 * frac.min():.1f}% of voxels)")
    return True, ""


def detect_phase_scaling(arrays, path=None, units=None) -> PhaseScaling:
    """Decide the scaling of the phase ``arrays`` (all echoes). ``InputError`` naming ``path`` if unknown.

    ``units`` from a sidecar ("rad"): trusted when the values lie within [-pi, pi] (or [0, 2pi]).
    """
    sample = _sample(arrays)
    if sample.size == 0:
        raise InputError("the phase image is empty", path)
    if not np.isfinite(sample).all():
        raise InputError("the phase holds NaN or Inf values", path)
    lo, hi = float(sample.min()), float(sample.max())
    span = hi - lo
    if span <= 0:
        raise InputError(f"unknown phase range: the phase is constant ({lo:.6g})", path)
    tol = 1e-3
    if units in ("rad", "radian", "radians"):
        if lo >= -np.pi - tol and hi <= np.pi + tol:
            return PhaseScaling("radians", 1.0, 0.0, 0.0, lo, hi)
        if lo >= -tol and hi <= TWO_PI + tol:
            return PhaseScaling("radians 0..2pi", 1.0, 0.0, 0.0, lo, hi)
    integral = bool(np.all(sample == np.round(sample)))
    if lo >= -np.pi - tol and hi <= np.pi + tol:
        if span >= np.pi:
            return PhaseScaling("radians", 1.0, 0.0, 0.0, lo, hi)
        ok, _ = _looks_wrapped(sample, lo, hi)
        if not ok:  # small-range radians (e.g. a short single echo): keep, it is within +-pi
            return PhaseScaling("radians", 1.0, 0.0, 0.0, lo, hi)
    elif lo >= -tol and hi <= TWO_PI + tol and span >= np.pi:
        return PhaseScaling("radians 0..2pi", 1.0, 0.0, 0.0, lo, hi)
    elif lo >= -1000 * np.pi - 1 and hi <= 1000 * np.pi + 1 and span >= 1000 * np.pi and lo < 0:
        return PhaseScaling("mrad", 1e-3, 0.0, 0.0, lo, hi)
    elif integral and lo >= -4096.5 and hi <= 4095.5 and lo < 0 and span >= 4096:
        return PhaseScaling("[-4096, 4095]", np.pi / 4096.0, 0.0, 0.0, lo, hi)
    elif integral and lo >= -0.5 and hi <= 4095.5 and hi >= 2048:
        return PhaseScaling("[0, 4095]", TWO_PI / 4096.0, 0.0, -np.pi, lo, hi)
    ok, why = _looks_wrapped(sample, lo, hi)
    if not ok:
        raise InputError(f"unknown phase range [{lo:.6g}, {hi:.6g}]: not radians, mrad, [-4096, 4095] "
                         f"or [0, 4095], and {why} (unwrapped phase or a magnitude image?)", path)
    step = _quantisation_step(sample)
    period = span + step
    return PhaseScaling("rescaled", TWO_PI / period, lo, -np.pi, lo, hi)
