"""One side's plan in one call: suggested target, entry search, electrode, coordinates (RAS, AC-PC, Leksell)
as a JSON-ready dict. World = the space of ``risk`` and of the returned points (RAS mm)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..stereotaxy import plan_to_dict
from ..volume import apply
from .electrodes import place_electrode
from .risk import RiskMap
from .target import NUCLEI_VALUES, labelmap_of, side_name, suggest_target
from .trajectory import Instruments, score_trajectory, search_entries


@dataclass
class SidePlan:
    side: str
    target_ras: np.ndarray
    search: object
    chosen: object
    placement: object
    plan: dict = field(default_factory=dict)


def _bottleneck_depth(score) -> float:
    """Depth (mm above the target) where the path comes closest to a vessel."""
    prof = score.profile or {}
    if "vessels_clearance_mm" not in prof:
        return float("nan")
    return float(prof["depth_mm"][int(np.argmin(prof["vessels_clearance_mm"]))])


def _where(depth_mm: float) -> str:
    if not np.isfinite(depth_mm):
        return "along the path"
    return f"{-depth_mm:.0f} mm beyond it" if depth_mm < 0 else f"{depth_mm:.0f} mm above it"


def vein_clear_targets(segmentation, side, target_ras, risk: RiskMap, world_from_segmentation=None,
                       margin_mm: float = 3.0, instruments: Instruments | None = None,
                       max_shift_mm: float = 2.5, n: int = 3, min_separation_mm: float = 0.7) -> list:
    """Up to ``n`` alternative targets (world RAS mm) inside the side's STN, within ``max_shift_mm`` of
    ``target_ras``, whose distance to the nearest vessel leaves the instruments' spread (MER tracks and
    radius) plus ``margin_mm``; nearest to ``target_ras`` first. Empty without a vessel layer."""
    if "vessels" not in risk:
        return []
    lab = labelmap_of(segmentation)
    stn = np.asarray(lab.data) == NUCLEI_VALUES["STN_L" if side_name(side) == "left" else "STN_R"]
    if not stn.any():
        return []
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    pts = lab.ijk_to_ras(np.argwhere(stn).astype(float)) @ w[:3, :3].T + w[:3, 3]
    shift = np.linalg.norm(pts - np.asarray(target_ras, float), axis=1)
    near = shift <= max_shift_mm
    pts, shift = pts[near], shift[near]
    inst = instruments or Instruments()
    reach = max(np.hypot(a, b) + r for a, b, r in inst.offsets())
    ok = risk.distance("vessels", pts) - reach >= margin_mm + 0.25
    out = []
    for i in np.argsort(shift):
        if ok[i] and all(np.linalg.norm(pts[i] - q) >= min_separation_mm for q in out):
            out.append(pts[i])
            if len(out) >= n:
                break
    return out


def safer_target(segmentation, side, target_ras, risk: RiskMap, world_from_segmentation=None,
                 margin_mm: float = 3.0, instruments: Instruments | None = None, landmarks=None,
                 max_shift_mm: float = 2.5):
    """(target, EntrySearch) for the nearest of ``vein_clear_targets`` from which ``search_entries`` finds
    an entry keeping ``margin_mm``; None when there is none."""
    for alt in vein_clear_targets(segmentation, side, target_ras, risk, world_from_segmentation, margin_mm,
                                  instruments, max_shift_mm):
        alt_search = search_entries(alt, side, risk, margin_mm, landmarks, instruments)
        if alt_search.feasible:
            return np.asarray(alt, float), alt_search
    return None


def coordinates(side, target_ras, entry_ras, xyz_from_world=None, landmarks=None, mounting: str = "lateral-right",
                mer_spacing_mm: float = 2.0, mer_pattern: str = "cross", frame_system: str = "leksell") -> dict:
    """The coordinate part of a side plan (``stereotaxy.plan_to_dict``): target and entry in RAS, AC-PC
    (with AC, PC, MS) and, with ``xyz_from_world`` (world RAS -> the native coordinates of ``frame_system``),
    the frame's coordinates and settings, and the MER tracks."""
    lm = {k: landmarks[k] for k in ("AC", "PC", "MS")} if landmarks and all(
        k in landmarks for k in ("AC", "PC", "MS")) else None
    return plan_to_dict(target_ras, entry_ras, xyz_from_world, mounting, lm, spacing_mm=mer_spacing_mm,
                        pattern=mer_pattern, side=side, system=frame_system)


def update_coordinates(side_plan: SidePlan, xyz_from_world=None, landmarks=None, mounting: str = "lateral-right",
                       mer_spacing_mm: float = 2.0, mer_pattern: str = "cross",
                       frame_system: str = "leksell") -> SidePlan:
    """``side_plan`` with its coordinates computed again for a frame pose, landmarks or mounting that
    changed after it was planned (the trajectory and its safety stay)."""
    side_plan.plan.update(coordinates(side_plan.side, side_plan.target_ras, side_plan.chosen.entry_ras,
                                      xyz_from_world, landmarks, mounting, mer_spacing_mm, mer_pattern,
                                      frame_system))
    return side_plan


def plan_side(side, segmentation, risk: RiskMap, world_from_segmentation=None, landmarks=None,
              xyz_from_world=None, mounting: str = "lateral-right", margin_mm: float = 3.0,
              electrode: str = "medtronic_3389", instruments: Instruments | None = None, target_ras=None,
              entry_ras=None, adjust_target_mm: float = 2.5, mer_spacing_mm: float = 2.0,
              mer_pattern: str = "cross", frame_system: str = "leksell", progress=None) -> SidePlan:
    """The plan of ``side`` ("left"/"right"). Target: suggested from ``segmentation`` (label map space,
    moved to the world by ``world_from_segmentation``) unless ``target_ras`` (world RAS) is given; entry:
    the best of the search unless ``entry_ras`` is given (then that trajectory is scored). When no entry
    to the suggested target keeps ``margin_mm`` (a vein next to the target, within the microelectrode
    spread, blocks every path), the target is moved by at most ``adjust_target_mm`` inside the STN to the
    nearest point from which a safe entry exists (plan ``target_adjustment`` says so); a side with a
    surgeon's target or entry is never moved."""
    side = side_name(side)
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    surgeon = target_ras is not None or entry_ras is not None
    target = np.asarray(target_ras, float) if target_ras is not None else apply(w, suggest_target(segmentation, side))
    search = search_entries(target, side, risk, margin_mm, landmarks, instruments, progress=progress)
    adjustment = None
    found = None
    if not search.feasible and not surgeon and adjust_target_mm > 0:
        found = safer_target(segmentation, side, target, risk, w, margin_mm, instruments, landmarks,
                             adjust_target_mm)
    if found is not None:
        alt, alt_search = found
        adjustment = {"suggested_RAS_mm": [float(v) for v in target],
                      "shift_mm": round(float(np.linalg.norm(alt - target)), 2),
                      "suggested_best_vessel_clearance_mm": round(search.best.vessel_clearance_mm, 2),
                      "reason": f"moved {np.linalg.norm(alt - target):.1f} mm inside the STN: no entry "
                                f"to the dorsolateral suggestion keeps {margin_mm:g} mm from the vessels "
                                f"(best {search.best.vessel_clearance_mm:.1f} mm, "
                                f"{_where(_bottleneck_depth(search.best))})"}
        target, search = alt, alt_search
    if entry_ras is not None:
        chosen = score_trajectory(target, entry_ras, risk, side, margin_mm, instruments, landmarks,
                                  label="surgeon's entry")
    else:
        chosen = search.best
        chosen.label = "suggested (candidate 1)"
    placement = place_electrode(electrode, target, chosen.entry_ras, side, segmentation=segmentation,
                                world_from_segmentation=w)
    d = coordinates(side, target, chosen.entry_ras, xyz_from_world, landmarks, mounting, mer_spacing_mm, mer_pattern,
                    frame_system)
    d["statement"] = search.statement()
    if adjustment is not None:
        d["statement"] = f"Target {adjustment['reason']}. " + d["statement"]
    d["target_adjustment"] = adjustment
    d["safety"] = chosen.to_dict()
    d["candidates"] = [c.to_dict() for c in search.candidates]
    d["standard"] = search.standard.to_dict() if search.standard is not None else None
    d["search"] = {"n_evaluated": search.n_evaluated, "n_safe": search.n_safe, "feasible": search.feasible,
                   "seconds": round(search.seconds, 3)}
    d["electrode"] = placement.to_dict()
    d["distance_profile"] = chosen.to_dict(with_profile=True).get("profile")
    return SidePlan(side, target, search, chosen, placement, d)


def plan_both_sides(segmentation, risk: RiskMap, world_from_segmentation=None, landmarks=None,
                    xyz_from_world=None, targets: dict | None = None, entries: dict | None = None,
                    progress=None, **options) -> dict:
    """{side: SidePlan} for 'left' and 'right' (``plan_side``; ``targets`` / ``entries``: {side: world RAS}
    overrides; ``options``: the other keywords of ``plan_side``)."""
    out = {}
    for k, side in enumerate(("left", "right")):
        sub = progress.sub(k / 2, (k + 1) / 2) if progress is not None else None
        out[side] = plan_side(side, segmentation, risk, world_from_segmentation, landmarks, xyz_from_world,
                              target_ras=(targets or {}).get(side), entry_ras=(entries or {}).get(side),
                              progress=sub, **options)
    return out
