"""One side's plan in one call: suggested target, entry search, electrode, coordinates (RAS, AC-PC, Leksell)
as a JSON-ready dict. World = the space of ``risk`` and of the returned points (RAS mm)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..stereotaxy import plan_to_dict

from .electrodes import electrode_model, place_electrode
from .risk import RiskMap
from .target import labelmap_of, side_letter, side_name
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


def target_structure(kind: str, side) -> str | None:
    """The segment a target of ``kind`` lies in ("STN_L", "GPi_R", ...; None for the VIM, planned
    indirectly)."""
    name = {"stn": "STN", "gpi": "GPi"}.get(kind)
    return None if name is None else f"{name}_{side_letter(side)}"


def vein_clear_targets(segmentation, side, target_ras, risk: RiskMap, world_from_segmentation=None,
                       margin_mm: float = 3.0, instruments: Instruments | None = None,
                       max_shift_mm: float = 2.5, n: int = 3, min_separation_mm: float = 0.7,
                       structure: str | None = None) -> list:
    """Up to ``n`` alternative targets (world RAS mm) inside ``structure`` (default the side's STN), within
    ``max_shift_mm`` of ``target_ras``, whose distance to the nearest vessel leaves the instruments' spread
    (MER tracks and radius) plus ``margin_mm``; nearest to ``target_ras`` first. Empty without a vessel
    layer."""
    from ..segmentation.structures import VALUES
    if "vessels" not in risk:
        return []
    lab = labelmap_of(segmentation)
    inside = np.asarray(lab.data) == VALUES[structure or target_structure("stn", side)]
    if not inside.any():
        return []
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    pts = lab.ijk_to_ras(np.argwhere(inside).astype(float)) @ w[:3, :3].T + w[:3, 3]
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
                 max_shift_mm: float = 2.5, structure: str | None = None):
    """(target, EntrySearch) for the nearest of ``vein_clear_targets`` (in ``structure``) from which
    ``search_entries`` finds an entry keeping ``margin_mm``; None when there is none."""
    for alt in vein_clear_targets(segmentation, side, target_ras, risk, world_from_segmentation, margin_mm,
                                  instruments, max_shift_mm, structure=structure):
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
              mer_pattern: str = "cross", frame_system: str = "leksell", target_kind: str = "stn",
              third_ventricle=None, progress=None) -> SidePlan:
    """The plan of ``side`` ("left"/"right") for a target of ``target_kind`` ("stn", "gpi", "vim").

    Target: suggested (``kinds.suggest_target_of_kind``: the dorsolateral STN or the posteroventral GPi from
    ``segmentation``, label map space moved to the world by ``world_from_segmentation``; the VIM from AC-PC
    and ``third_ventricle``) unless ``target_ras`` (world RAS) is given; the plan carries the suggestion
    with its cross-check (``target_suggestion``), or for a given target the kind's indirect check. Entry: the
    best of the search unless ``entry_ras`` is given (then that trajectory is scored). When no entry to a
    suggested STN or GPi target keeps ``margin_mm`` (a vein next to it, within the microelectrode spread,
    blocks every path), the target moves by at most ``adjust_target_mm`` inside the nucleus to the nearest
    point with a safe entry (``target_adjustment`` says so); a surgeon's target or entry is never moved."""
    from .kinds import KIND_NAMES, check_target_kind, indirect_check, suggest_target_of_kind
    side = side_name(side)
    kind = check_target_kind(target_kind)
    structure = target_structure(kind, side)
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    surgeon = target_ras is not None or entry_ras is not None
    suggestion = None
    if target_ras is not None:
        target = np.asarray(target_ras, float)
    else:
        suggestion = suggest_target_of_kind(kind, side, segmentation, landmarks, w, third_ventricle)
        target = suggestion.target_ras
    search = search_entries(target, side, risk, margin_mm, landmarks, instruments, progress=progress)
    adjustment = None
    found = None
    if not search.feasible and not surgeon and adjust_target_mm > 0 and structure is not None:
        found = safer_target(segmentation, side, target, risk, w, margin_mm, instruments, landmarks,
                             adjust_target_mm, structure)
    if found is not None:
        alt, alt_search = found
        adjustment = {"suggested_RAS_mm": [float(v) for v in target],
                      "shift_mm": round(float(np.linalg.norm(alt - target)), 2),
                      "suggested_best_vessel_clearance_mm": round(search.best.vessel_clearance_mm, 2),
                      "reason": f"moved {np.linalg.norm(alt - target):.1f} mm inside the {KIND_NAMES[kind]}: no entry "
                                f"to the suggested target keeps {margin_mm:g} mm from the vessels "
                                f"(best {search.best.vessel_clearance_mm:.1f} mm, "
                                f"{_where(_bottleneck_depth(search.best))})"}
        target, search = alt, alt_search
    if entry_ras is not None:
        chosen = score_trajectory(target, entry_ras, risk, side, margin_mm, instruments, landmarks,
                                  label="surgeon's entry")
    else:
        chosen = search.best
        chosen.label = "suggested (candidate 1)"
    tip_depth = None
    if suggestion is not None and kind == "gpi":   # the lead's tip stays inside the GPi, above the optic tract
        ventral = suggestion.details.get("ventral_clearance_mm")
        model = electrode_model(electrode)
        if ventral is not None:
            tip_depth = min(model.tip_mm + model.span_mm / 2.0, max(float(ventral), 0.0))
    placement = place_electrode(electrode, target, chosen.entry_ras, side, tip_depth, segmentation=segmentation,
                                world_from_segmentation=w, structure=structure)
    d = coordinates(side, target, chosen.entry_ras, xyz_from_world, landmarks, mounting, mer_spacing_mm, mer_pattern,
                    frame_system)
    d["target_kind"] = kind
    d["target_suggestion"] = None if suggestion is None else suggestion.to_dict()
    d["indirect_check"] = indirect_check(kind, target, landmarks, third_ventricle) if suggestion is None else None
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
