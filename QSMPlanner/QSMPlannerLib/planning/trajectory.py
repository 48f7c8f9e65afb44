"""Trajectory scoring and the safe-entry search.

A trajectory runs from the target (RAS mm) to an entry (RAS mm). Its direction is described by two
angles in the AC-PC frame (RAS axes without landmarks): ``elevation_deg`` above the AC-PC (axial)
plane, towards anterior (90 = vertical), and ``lateral_deg`` outward from the mid-sagittal plane.

Safety: the instruments are the lead (radius 0.635 mm) and, by default, a "cross" Ben-gun of 5
microelectrode tracks (centre and ±2 mm medial/lateral/anterior/posterior, cannula radius 0.5 mm).
A structure's *clearance* is the smallest distance from it to the surface of any instrument along the
path; a trajectory is *safe* when the vessel clearance is ≥ ``margin_mm`` (default 3 mm) and no instrument
enters a ventricle. Sulcus crossing (CSF within the instruments near the cortex) is flagged and penalised.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .risk import FAR_MM, RiskMap
from .target import acpc_axes, outward_sign, side_name

LEAD_RADIUS_MM = 0.635


@dataclass
class Instruments:
    """What goes down the path: the lead and (optionally) microelectrode tracks around it."""
    lead_radius_mm: float = LEAD_RADIUS_MM
    mer_tracks: bool = True
    mer_spacing_mm: float = 2.0
    mer_radius_mm: float = 0.5
    pattern: str = "cross"  # "cross" (5 tracks) or "grid" (3x3)

    def offsets(self) -> list[tuple[float, float, float]]:
        """[(a, b, radius_mm)]: track offsets along the path's medial-lateral (a) and AP (b) axes."""
        out = [(0.0, 0.0, max(self.lead_radius_mm, self.mer_radius_mm if self.mer_tracks else 0.0))]
        if self.mer_tracks:
            s = self.mer_spacing_mm
            pts = [(s, 0), (-s, 0), (0, s), (0, -s)]
            if self.pattern == "grid":
                pts += [(s, s), (s, -s), (-s, s), (-s, -s)]
            out += [(float(a), float(b), self.mer_radius_mm) for a, b in pts]
        return out


@dataclass
class Admissible:
    """Admissible entry region (frontal, precoronal, lateral of the midline) as angle limits."""
    elevation_deg: tuple = (35.0, 80.0)   # above the AC-PC plane, towards anterior (< 90: precoronal)
    lateral_deg: tuple = (0.0, 40.0)      # outward from the mid-sagittal plane
    step_deg: float = 1.5
    min_entry_lateral_mm: float = 15.0    # entry at least this far from the mid-sagittal plane
    max_length_mm: float = 110.0          # search ray length (the entry is where the ray leaves the brain)
    default_length_mm: float = 80.0       # entry distance when there is no brain layer


@dataclass
class TrajectoryScore:
    """A scored trajectory. Points RAS mm (world); distances and clearances mm; angles degrees."""
    side: str
    target_ras: np.ndarray
    entry_ras: np.ndarray
    length_mm: float
    elevation_deg: float
    lateral_deg: float
    vessel_distance_mm: float        # centre line to nearest vessel (surface)
    vessel_clearance_mm: float       # nearest vessel to any instrument surface
    ventricle_clearance_mm: float
    sulcus_clearance_mm: float
    crosses_ventricle: bool
    crosses_sulcus: bool
    safe: bool
    risk: float
    margin_mm: float
    label: str = ""
    profile: dict = field(default_factory=dict)  # depth_mm (above target) + per-layer clearance arrays

    def to_dict(self, with_profile: bool = False) -> dict:
        d = {"label": self.label, "side": self.side, "target_ras": [float(v) for v in self.target_ras],
             "entry_ras": [float(v) for v in self.entry_ras], "length_mm": float(self.length_mm),
             "elevation_deg": float(self.elevation_deg), "lateral_deg": float(self.lateral_deg),
             "vessel_distance_mm": _f(self.vessel_distance_mm),
             "vessel_clearance_mm": _f(self.vessel_clearance_mm),
             "ventricle_clearance_mm": _f(self.ventricle_clearance_mm),
             "sulcus_clearance_mm": _f(self.sulcus_clearance_mm),
             "crosses_ventricle": bool(self.crosses_ventricle), "crosses_sulcus": bool(self.crosses_sulcus),
             "safe": bool(self.safe), "risk": float(self.risk), "margin_mm": float(self.margin_mm)}
        if with_profile and self.profile:
            d["profile"] = {k: [_f(x) for x in np.asarray(v)] for k, v in self.profile.items()}
        return d


def _f(x) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) or x >= FAR_MM else round(x, 3)


def direction_from_angles(elevation_deg, lateral_deg, side, axes=None) -> np.ndarray:
    """Unit vector(s) target->entry in RAS from the angles (arrays broadcast), AC-PC ``axes`` (rows x,y,z)."""
    axes = np.eye(3) if axes is None else np.asarray(axes, float)
    el, la = np.deg2rad(np.asarray(elevation_deg, float)), np.deg2rad(np.asarray(lateral_deg, float))
    c = np.stack([outward_sign(side) * np.sin(la), np.cos(la) * np.cos(el), np.cos(la) * np.sin(el)], -1)
    return c @ axes


def angles_from_direction(u, side, axes=None) -> tuple[float, float]:
    """(elevation_deg, lateral_deg) of a target->entry direction (RAS)."""
    axes = np.eye(3) if axes is None else np.asarray(axes, float)
    c = axes @ (np.asarray(u, float) / np.linalg.norm(u))
    lat = np.degrees(np.arcsin(np.clip(outward_sign(side) * c[0], -1, 1)))
    el = np.degrees(np.arctan2(c[2], c[1]))
    return float(el), float(lat)


def _track_frame(u: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors perpendicular to each direction u (N, 3): medial-lateral e1 and anterior-posterior e2."""
    x = axes[0]
    e1 = x[None, :] - (u @ x)[:, None] * u
    bad = np.linalg.norm(e1, axis=1) < 1e-6
    if bad.any():
        y = axes[1]
        e1[bad] = y - (u[bad] @ y)[:, None] * u[bad]
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(u, e1)
    return e1, e2


def _entry_on_brain(risk: RiskMap, target, u, adm: Admissible, step_mm: float) -> np.ndarray:
    """Length (mm) from target to where each ray (N, 3) leaves the brain (last sample inside)."""
    n = len(u)
    if "brain" not in risk:
        return np.full(n, adm.default_length_mm)
    s = np.arange(0.0, adm.max_length_mm + 1e-9, step_mm)
    pts = target[None, None, :] + s[None, :, None] * u[:, None, :]
    inside = risk.distance("brain", pts, outside=0.0) > 0.5
    any_in = inside.any(axis=1)
    last = inside.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    length = np.where(any_in, s[last], adm.default_length_mm)
    return np.maximum(length, 10.0)


def _evaluate(risk: RiskMap, target, u, length, inst: Instruments, step_mm: float, beyond_mm: float,
              profile: bool = False, axes=None):
    """Per candidate: clearance per layer (min over instruments and samples). u (N,3), length (N,)."""
    axes = np.eye(3) if axes is None else axes
    n = len(u)
    s = np.arange(-beyond_mm, float(np.max(length)) + 1e-9, step_mm)
    valid = s[None, :] <= length[:, None] + 1e-9
    e1, e2 = _track_frame(u, axes)
    offs = inst.offsets()
    out, prof = {}, {}
    centre = target[None, None, :] + s[None, :, None] * u[:, None, :]      # (N, M, 3)
    for name in ("vessels", "ventricles", "sulci"):
        if name not in risk:
            out[name] = np.full(n, np.inf)
            out[name + "_centre"] = np.full(n, np.inf)
            if profile:
                prof[name] = np.full((n, len(s)), np.inf)
            continue
        per_sample = np.full((n, len(s)), np.inf)
        centre_d = None
        for a, b, r in offs:
            pts = centre + (a * e1 + b * e2)[:, None, :]
            d = risk.distance(name, pts)
            if centre_d is None:
                centre_d = d
            per_sample = np.minimum(per_sample, d - r)
        per_sample = np.where(valid, per_sample, np.inf)
        out[name] = per_sample.min(axis=1)
        out[name + "_centre"] = np.where(valid, centre_d, np.inf).min(axis=1)
        if profile:
            prof[name] = per_sample
    return out, s, prof


def _risk_value(vessel, ventricle, sulcus, crosses_sulcus, angle_dev_deg, margin_mm, safe):
    """Lower is better: penalties for closeness (within 10 mm) to vessels, ventricles and sulci, a sulcus
    crossing, and deviation from the textbook angles; +10 when not safe."""
    def near(d, scale):
        d = np.where(np.isfinite(d), d, scale)
        return np.clip((scale - d) / scale, 0.0, 1.0)
    return (1.0 * near(vessel, 10.0) + 0.5 * near(ventricle, 10.0) + 0.3 * near(sulcus, 5.0)
            + 0.5 * crosses_sulcus + 0.1 * np.asarray(angle_dev_deg) / 30.0 + 10.0 * (~np.asarray(safe)))


def _scores(risk, target, u, length, side, margin_mm, inst, step_mm, beyond_mm, axes, profile=False,
            preferred=(60.0, 20.0)):
    res, s, prof = _evaluate(risk, target, u, length, inst, step_mm, beyond_mm, profile, axes)
    vessel, ventricle, sulcus = res["vessels"], res["ventricles"], res["sulci"]
    crosses_ventricle = ventricle < 0.0
    crosses_sulcus = sulcus < 0.0
    safe = (vessel >= margin_mm) & ~crosses_ventricle
    c = u @ axes.T
    lat = np.degrees(np.arcsin(np.clip(outward_sign(side) * c[:, 0], -1, 1)))
    el = np.degrees(np.arctan2(c[:, 2], c[:, 1]))
    dev = np.abs(el - preferred[0]) + np.abs(lat - preferred[1])
    risk_v = _risk_value(vessel, ventricle, sulcus, crosses_sulcus, dev, margin_mm, safe)
    return dict(vessel=vessel, vessel_centre=res["vessels_centre"], ventricle=ventricle, sulcus=sulcus,
                crosses_ventricle=crosses_ventricle, crosses_sulcus=crosses_sulcus, safe=safe, risk=risk_v,
                elevation=el, lateral=lat, s=s, prof=prof)


def score_trajectory(target_ras, entry_ras, risk: RiskMap, side=None, margin_mm: float = 3.0,
                     instruments: Instruments | None = None, landmarks=None, step_mm: float = 0.5,
                     beyond_target_mm: float = 2.0, label: str = "") -> TrajectoryScore:
    """Score one trajectory (world RAS mm) with its distance profile: ``profile['depth_mm']`` (mm above
    the target, entry last) and per layer the clearance (mm) at that depth. ``side`` defaults from the
    target's R coordinate relative to the AC-PC midline. Fast enough to re-score a dragged entry."""
    target = np.asarray(target_ras, float)
    entry = np.asarray(entry_ras, float)
    length = float(np.linalg.norm(entry - target))
    if length < 1.0:
        raise InputError("entry and target coincide")
    axes, origin = acpc_axes(landmarks)
    if side is None:
        side = "right" if (target - origin) @ axes[0] > 0 else "left"
    side = side_name(side)
    inst = instruments or Instruments()
    u = ((entry - target) / length)[None, :]
    r = _scores(risk, target, u, np.array([length]), side, margin_mm, inst, step_mm, beyond_target_mm, axes,
                profile=True)
    valid = r["s"] <= length + 1e-9
    prof = {"depth_mm": r["s"][valid]}
    for k, v in r["prof"].items():
        prof[k + "_clearance_mm"] = v[0][valid]
    return TrajectoryScore(side, target, entry, length, float(r["elevation"][0]), float(r["lateral"][0]),
                           float(r["vessel_centre"][0]), float(r["vessel"][0]), float(r["ventricle"][0]),
                           float(r["sulcus"][0]), bool(r["crosses_ventricle"][0]), bool(r["crosses_sulcus"][0]),
                           bool(r["safe"][0]), float(r["risk"][0]), float(margin_mm), label, prof)


def standard_trajectory(target_ras, side, risk: RiskMap | None = None, landmarks=None,
                        elevation_deg: float = 60.0, lateral_deg: float = 20.0,
                        length_mm: float | None = None) -> np.ndarray:
    """Entry (RAS mm) of the textbook straight frontal approach (60° above AC-PC, 20° lateral), placed
    where the ray leaves the brain when ``risk`` has a brain layer, else ``length_mm`` (default 80)."""
    axes, _ = acpc_axes(landmarks)
    target = np.asarray(target_ras, float)
    u = direction_from_angles(elevation_deg, lateral_deg, side, axes)[None, :]
    if length_mm is None:
        adm = Admissible()
        length_mm = float(_entry_on_brain(risk, target, u, adm, 1.0)[0]) if risk is not None \
            else adm.default_length_mm
    return target + length_mm * u[0]


@dataclass
class EntrySearch:
    """Result of ``search_entries``: ranked candidates (best first), the standard trajectory, the grid."""
    side: str
    target_ras: np.ndarray
    candidates: list
    standard: TrajectoryScore | None
    grid_elevation_deg: np.ndarray
    grid_lateral_deg: np.ndarray
    grid_vessel_clearance_mm: np.ndarray
    grid_safe: np.ndarray
    n_evaluated: int
    n_safe: int
    margin_mm: float
    seconds: float

    @property
    def feasible(self) -> bool:
        return self.n_safe > 0

    @property
    def best(self) -> TrajectoryScore | None:
        return self.candidates[0] if self.candidates else None

    def statement(self) -> str:
        """One sentence for the report."""
        if self.feasible:
            txt = (f"{self.n_safe} of {self.n_evaluated} admissible trajectories keep >= {self.margin_mm:g} mm "
                   f"from every vessel (instrument surface) and avoid the ventricles; every suggested "
                   f"trajectory shown does.")
        else:
            txt = (f"No admissible trajectory keeps {self.margin_mm:g} mm from every vessel; the candidates "
                   f"shown are the least risky ones and are NOT safe.")
        if self.standard is not None:
            txt += (" The standard trajectory (60 deg / 20 deg) is " +
                    ("safe." if self.standard.safe else
                     f"FLAGGED: vessel clearance {self.standard.vessel_clearance_mm:.1f} mm"
                     + (", crosses a ventricle" if self.standard.crosses_ventricle else "") + "."))
        return txt

    def to_dict(self) -> dict:
        return {"side": self.side, "target_ras": [float(v) for v in self.target_ras],
                "n_evaluated": self.n_evaluated, "n_safe": self.n_safe, "feasible": self.feasible,
                "margin_mm": self.margin_mm, "seconds": round(self.seconds, 3), "statement": self.statement(),
                "candidates": [c.to_dict() for c in self.candidates],
                "standard": self.standard.to_dict() if self.standard is not None else None}


def search_entries(target_ras, side, risk: RiskMap, margin_mm: float = 3.0, landmarks=None,
                   instruments: Instruments | None = None, admissible: Admissible | None = None,
                   n_best: int = 5, min_separation_deg: float = 4.0, step_mm: float = 1.0,
                   beyond_target_mm: float = 2.0, progress=None) -> EntrySearch:
    """Search the admissible entry region for ``side`` (angle grid every ``admissible.step_deg``), entries
    where each ray leaves the brain; rank safe trajectories first, then by risk; return the ``n_best``
    (at least ``min_separation_deg`` apart) with their distance profiles, plus the standard trajectory."""
    t0 = time.perf_counter()
    side = side_name(side)
    adm = admissible or Admissible()
    inst = instruments or Instruments()
    target = np.asarray(target_ras, float)
    axes, origin = acpc_axes(landmarks)
    el = np.arange(adm.elevation_deg[0], adm.elevation_deg[1] + 1e-9, adm.step_deg)
    la = np.arange(adm.lateral_deg[0], adm.lateral_deg[1] + 1e-9, adm.step_deg)
    gel, gla = np.meshgrid(el, la, indexing="ij")
    u = direction_from_angles(gel.ravel(), gla.ravel(), side, axes)
    length = _entry_on_brain(risk, target, u, adm, 1.0)
    entries = target + length[:, None] * u
    lateral_mm = outward_sign(side) * ((entries - origin) @ axes[0])
    ok = lateral_mm >= adm.min_entry_lateral_mm
    if progress is not None:
        progress.update(0.2, "scoring entries")
    r = _scores(risk, target, u, length, side, margin_mm, inst, step_mm, beyond_target_mm, axes)
    safe = r["safe"] & ok
    risk_v = np.where(ok, r["risk"], np.inf)
    order = np.lexsort((risk_v, ~safe))
    chosen, cands = [], []
    for i in order:
        if not np.isfinite(risk_v[i]) or len(chosen) >= n_best:
            break
        if safe.any() and not safe[i]:  # when safe paths exist, only safe ones are suggested
            break
        if all(np.degrees(np.arccos(np.clip(u[i] @ u[j], -1, 1))) >= min_separation_deg for j in chosen):
            c = score_trajectory(target, entries[i], risk, side, margin_mm, inst, landmarks,
                                 label=f"candidate {len(chosen) + 1}")
            if safe[i] and not c.safe:  # the finer re-scoring (0.5 mm steps) has the last word
                safe[i] = False
                continue
            chosen.append(i)
            cands.append(c)
    if not cands and len(order) and np.isfinite(risk_v[order[0]]):  # every grid-safe path failed re-scoring
        i = order[0]
        cands.append(score_trajectory(target, entries[i], risk, side, margin_mm, inst, landmarks,
                                      label="candidate 1"))
    std_entry = standard_trajectory(target, side, risk, landmarks)
    std = score_trajectory(target, std_entry, risk, side, margin_mm, inst, landmarks, label="standard")
    if progress is not None:
        progress.update(1.0, "entry search done")
    return EntrySearch(side, target, cands, std, gel, gla, r["vessel"].reshape(gel.shape),
                       safe.reshape(gel.shape), int(ok.sum()), int(safe.sum()), float(margin_mm),
                       time.perf_counter() - t0)
