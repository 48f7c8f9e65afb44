"""Field-map inputs (as SEPIA and QSMxT take them): a local (tissue) field, a total field (background
not removed; a scanner B0 map in Hz is one) or an unwrapped phase, converted to ppm of B0.

Units: ``ppm`` (of B0), ``hz``, or ``rad`` (phase accrued at the echo time: Hz = rad / (2 pi TE)).
Unwrapped phase is radians, one volume per echo (4-D, echoes last, or 3-D for one echo): the field
is the magnitude-free least-squares slope over the echoes (with an intercept from 2 echoes on: the
phase offset is not assumed removed). Units come from the option, else the JSON sidecar beside the
file ("Units"), else from the values when exactly one of ppm and Hz (and rad, with --te) gives a field
of plausible size for its kind; otherwise the reader refuses to guess. Values are checked against what such a field can
be: a wrong unit, a wrapped phase or a field in the wrong place fails with ``InputError`` naming the
file. A DICOM directory holding a scanner B0 map is read through dcm2niix (Hz from its sidecar).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .gre import GAMMA_HZ_PER_T

FIELD_UNITS = ("ppm", "hz", "rad")
INPUT_KINDS = ("local", "total", "unwrapped_phase")
DEFAULT_B0_T = 3.0
# robust size (99.5th percentile of |field - median| in the mask) a field of each kind can have, ppm:
# tissue fields reach ~0.05-0.3 ppm, total fields in a shimmed brain ~0.3-5 ppm (air-tissue interfaces)
_SPREAD_PPM = {"local": (3e-3, 1.0), "total": (0.02, 30.0)}
_UNIT_WORDS = {"ppm": "ppm", "hz": "hz", "hertz": "hz", "rad": "rad", "radian": "rad", "radians": "rad",
               "rad/s": None}


@dataclass
class FieldInput:
    field_ppm: Volume            # 3-D field in ppm of B0 (RAS geometry of the input)
    kind: str                    # "local" | "total" (unwrapped phase becomes a total field)
    b0_tesla: float
    units: str                   # the units the file was read in
    notes: list = field(default_factory=list)


def _sidecar(path: Path) -> dict:
    if path.is_dir():
        return {}
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(ext):
            side = path.with_name(name[: -len(ext)] + ".json")
            if side.exists():
                try:
                    return json.loads(side.read_text())
                except (OSError, ValueError) as exc:
                    raise InputError(f"unreadable JSON sidecar ({exc})", side) from exc
    return {}


def _read(path: Path, allow_4d: bool) -> tuple[Volume, dict]:
    from .volumes import read_volume
    if path.is_dir():
        from .dcm2niix import load_dicom_field
        vol, side = load_dicom_field(path)
        return vol, side
    return read_volume(path, allow_4d=allow_4d, require_finite=False), _sidecar(path)


def _units(units, sidecar, path, kind) -> str:
    if units is not None:
        u = str(units).strip().lower()
        if u not in FIELD_UNITS:
            raise InputError(f"unknown field units {units!r} (choose ppm, hz or rad)", path)
        return u
    if kind == "unwrapped_phase":
        return "rad"
    side = str(sidecar.get("Units", "") or "").strip().lower()
    if side:
        u = _UNIT_WORDS.get(side)
        if u is None:
            raise InputError(f"the sidecar gives units {sidecar.get('Units')!r}: not ppm, Hz or rad; "
                             "give --field-units", path)
        return u
    return None


def _te_list(te, n, path, why) -> np.ndarray:
    if te is None or len(te) == 0:
        raise InputError(f"{why} needs the echo time(s): give --te in seconds", path)
    t = np.asarray([float(x) for x in te], float)
    if t.size != n:
        raise InputError(f"{t.size} echo times given for {n} echo(es) of the field", path)
    if not np.isfinite(t).all() or (t <= 0).any() or (t > 1.0).any():
        raise InputError(f"echo times must be positive seconds (got {t.tolist()}; milliseconds?)", path)
    if t.size > 1 and (np.diff(t) <= 0).any():
        raise InputError(f"echo times are not strictly increasing: {t.tolist()}", path)
    return t


def _looks_wrapped(phase: np.ndarray, mask: np.ndarray) -> bool:
    """Radian values confined to [-pi, pi] with jumps of ~2 pi between neighbours inside the mask."""
    vals = phase[mask]
    if vals.size == 0 or np.abs(vals).max() > np.pi + 1e-3:
        return False
    jumps = 0
    for ax in range(3):
        d = np.abs(np.diff(phase, axis=ax))
        both = np.logical_and(np.take(mask, range(mask.shape[ax] - 1), axis=ax),
                              np.take(mask, range(1, mask.shape[ax]), axis=ax))
        jumps += int((d[both] > 1.5 * np.pi).sum())
    return jumps > max(10, 1e-4 * mask.sum())


def _spread_ppm(ppm: np.ndarray, mask: np.ndarray) -> float:
    vals = ppm[mask]
    return float(np.percentile(np.abs(vals - np.median(vals)), 99.5))


def _to_ppm(data: np.ndarray, units: str, te_s, hz_per_ppm: float) -> np.ndarray:
    if units == "rad":
        return data / (2 * np.pi * te_s) / hz_per_ppm
    return data / hz_per_ppm if units == "hz" else data


def _check_size(ppm: np.ndarray, mask: np.ndarray, kind: str, units: str, path) -> None:
    spread = _spread_ppm(ppm, mask)
    low, top = _SPREAD_PPM[kind]
    if spread > top:
        hint = (" (Hz or radians given as ppm? or a total field: use --total-field)" if kind == "local"
                else " (Hz or radians given as ppm?)")
        raise InputError(f"as {units} this {kind} field spreads over {spread:.3g} ppm of B0 in the mask, "
                         f"more than a {kind} field can ({top:g} ppm){hint}: check --field-units", path)
    if spread < low:
        raise InputError(f"as {units} this {kind} field spreads over only {spread:.3g} ppm of B0 in the "
                         f"mask, less than a {kind} field does ({low:g} ppm; ppm given as Hz, or a fraction "
                         "of B0 rather than ppm?): check --field-units", path)


def _detect_units(data, mask, kind, te_s, hz_per_ppm, path) -> str:
    """The one unit in which the values make a field of plausible size, else ``InputError``."""
    low, top = _SPREAD_PPM[kind]
    candidates = ["ppm", "hz"] + (["rad"] if te_s is not None else [])
    fits = [u for u in candidates
            if low <= _spread_ppm(_to_ppm(data, u, te_s, hz_per_ppm), mask) <= top]
    if len(fits) != 1:
        why = "none" if not fits else " and ".join(fits)
        raise InputError(f"the field's units are unknown and its values fit {why} of "
                         f"{', '.join(candidates)} for a {kind} field: give --field-units (no JSON sidecar "
                         "with 'Units' beside the file)", path)
    return fits[0]


def read_field_input(path, kind: str, mask: Volume, units: str | None = None, te=None,
                     b0_tesla: float | None = None) -> FieldInput:
    """Read a field-map input and convert it to ppm of B0 (see the module docstring).

    ``kind``: "local" | "total" | "unwrapped_phase"; ``mask``: the mask on the same grid (its values
    are checked there); ``units``: "ppm" | "hz" | "rad" or None (sidecar); ``te``: echo time(s) in s
    (rad and unwrapped phase); ``b0_tesla``: field strength (Hz and rad; else sidecar, else 3 T noted).
    """
    path = Path(path)
    if kind not in INPUT_KINDS:
        raise InputError(f"unknown field input {kind!r} (choose {', '.join(INPUT_KINDS)})")
    if not path.exists():
        raise InputError("file not found", path)
    if mask is None:
        flag = "--" + kind.replace("_", "-") + ("-field" if kind != "unwrapped_phase" else "")
        raise InputError(f"{flag} needs --mask: there is no magnitude to compute a brain mask from", path)
    vol, side = _read(path, allow_4d=kind == "unwrapped_phase")
    data = np.asarray(vol.data, np.float64)
    shape3 = data.shape[:3]
    if mask.shape3 != shape3 or not np.allclose(mask.ras_from_ijk, vol.ras_from_ijk, atol=1e-3):
        dmax = float(np.abs(np.asarray(mask.ras_from_ijk) - vol.ras_from_ijk).max()) \
            if mask.shape3 == shape3 else None
        what = f"shape {mask.shape3} vs {shape3}" if dmax is None else \
            f"voxel-to-RAS matrices differ by up to {dmax:.4g} mm"
        raise InputError(f"the mask and the field are not on the same grid ({what})",
                         mask.meta.get("path") or mask.name or path)
    m = np.asarray(mask.data) > 0
    if m.ndim > 3:
        m = m.reshape(shape3)
    if not m.any():
        raise InputError("the mask has no voxels", mask.meta.get("path") or mask.name or None)
    n_bad = int((~np.isfinite(data[m])).sum())
    if n_bad:
        raise InputError(f"{n_bad} field values inside the mask are NaN or Inf", path)
    data = np.where(np.isfinite(data), data, 0.0)
    u = _units(units, side, path, kind)
    notes = []
    if b0_tesla is None:
        b0_tesla = side.get("MagneticFieldStrength")
    b0_assumed = b0_tesla is None
    b0 = DEFAULT_B0_T if b0_assumed else float(b0_tesla)
    if b0 > 100:      # gauss
        b0 /= 10000.0
    if not np.isfinite(b0) or not 0.1 <= b0 <= 20.0:
        raise InputError(f"field strength {b0} T is implausible (expected 0.1..20 T)", path)
    hz_per_ppm = GAMMA_HZ_PER_T * b0 * 1e-6
    if kind == "unwrapped_phase":
        if u != "rad":
            raise InputError(f"unwrapped phase is in radians, not {u}", path)
        n_echoes = data.shape[3] if data.ndim == 4 else 1
        t = _te_list(te, n_echoes, path, "unwrapped phase")
        phase = data if data.ndim == 4 else data[..., None]
        if _looks_wrapped(phase[..., -1], m):
            raise InputError("the phase looks wrapped (values within [-pi, pi] with 2 pi jumps inside the "
                             "mask): give unwrapped phase, or use --mag/--phase for wrapped echoes", path)
        if n_echoes == 1:
            hz = phase[..., 0] / (2 * np.pi * t[0])
        else:   # least-squares slope with an intercept (the phase offset)
            tc = t - t.mean()
            hz = np.tensordot(phase - phase.mean(axis=3, keepdims=True), tc, axes=([3], [0])) \
                / (tc @ tc) / (2 * np.pi)
        ppm = hz / hz_per_ppm
        kind_out = "total"
        _check_size(ppm, m, "total", u, path)
        notes.append(f"unwrapped phase of {n_echoes} echo(es) -> field (total, background not removed)")
    else:
        if data.ndim != 3:
            raise InputError(f"a {kind} field must be 3-D, got shape {data.shape}", path)
        te1 = None
        if u == "rad" or (u is None and te):
            te1 = float(_te_list(te, 1, path, "a field in radians")[0])
        if u is None:
            u = _detect_units(data, m, kind, te1, hz_per_ppm, path)
            notes.append(f"units not given: the values fit a {kind} field only as {u}")
        if u == "rad" and _looks_wrapped(data, m):
            raise InputError("the field in radians looks wrapped (2 pi jumps inside the mask)", path)
        ppm = _to_ppm(data, u, te1, hz_per_ppm)
        kind_out = kind
        _check_size(ppm, m, kind_out, u, path)
    if b0_assumed and u != "ppm":
        notes.append(f"field strength not given and not in a sidecar: assuming {DEFAULT_B0_T} T")
    what = "unwrapped phase" if kind == "unwrapped_phase" else f"{kind} field"
    notes.append(f"{what} read as {u}" + ("" if u == "ppm" else f" at {b0:g} T"))
    out = Volume(np.where(m, ppm, 0).astype(np.float32), vol.ras_from_ijk.copy(), f"{kind_out}_field_ppm")
    return FieldInput(out, kind_out, b0, u, notes)
