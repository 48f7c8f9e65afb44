"""Both sides planned in one call: suggested target, entry search, electrode, coordinates (RAS, AC-PC,
Leksell) as a JSON-ready plan dict. World = the space of ``risk`` and of the returned points (RAS mm)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .electrodes import place_electrode
from .risk import RiskMap
from .target import NUCLEI_VALUES, labelmap_of, side_name, suggest_target
from .trajectory import Instruments, score_trajectory, search_entries

COORDINATE_SYSTEMS = {
    "RAS": "world RAS mm = the planning T1's scanner space as in 3D Slicer (+R right, +A anterior, +S superior)",
    "LPS": "DICOM patient mm of the same space (L = -R, P = -A)",
    "LeksellXYZ": "Leksell frame mm (+X patient's left, +Y anterior, +Z inferior, centre 100/100/100)",
    "ACPC": "mm from the mid-commissural point (+x right, +y anterior, +z superior)",
}


@dataclass
class SidePlan:
    side: str
    target_ras: np.ndarray
    search: object
    chosen: object
    placement: object
    plan: dict = field(default_factory=dict)


def _apply(m, p):
    m = np.asarray(m, float)
    return m[:3, :3] @ np.asarray(p, float) + m[:3, 3]


def _point_dict(p_ras, xyz_from_world, landmarks):
    from .target import acpc_axes
    d = {"RAS_mm": [float(v) for v in p_ras], "LPS_mm": [float(-p_ras[0]), float(-p_ras[1]), float(p_ras[2])]}
    if landmarks and all(k in landmarks for k in ("AC", "PC", "MS")):
        axes, origin = acpc_axes(landmarks)
        d["ACPC_mm"] = [float(v) for v in axes @ (np.asarray(p_ras, float) - origin)]
    if xyz_from_world is not None:
        d["LeksellXYZ_mm"] = [float(v) for v in _apply(xyz_from_world, p_ras)]
    return d


def side_plan_dict(target_ras, entry_ras, xyz_from_world=None, landmarks=None, mounting="lateral-right",
                   side=None) -> dict:
    """Coordinates of one trajectory: stereotaxy.plan_to_dict when available (ring/arc, MER tracks),
    else RAS / LPS / AC-PC / Leksell XYZ computed here (ring/arc left out)."""
    try:
        from ..stereotaxy import plan_to_dict
        lm = {k: landmarks[k] for k in ("AC", "PC", "MS")} if landmarks and all(
            k in landmarks for k in ("AC", "PC", "MS")) else None
        return plan_to_dict(target_ras, entry_ras, xyz_from_world, mounting, lm, side=side)
    except ImportError:
        t, e = np.asarray(target_ras, float), np.asarray(entry_ras, float)
        return {"coordinate_systems": COORDINATE_SYSTEMS, "target": _point_dict(t, xyz_from_world, landmarks),
                "entry": _point_dict(e, xyz_from_world, landmarks), "length_mm": float(np.linalg.norm(e - t)),
                "frame": None}


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


def plan_both_sides(segmentation, risk: RiskMap, world_from_segmentation=None, landmarks=None,
                    xyz_from_world=None, mounting: str = "lateral-right", margin_mm: float = 3.0,
                    electrode: str = "medtronic_3389", instruments: Instruments | None = None,
                    targets: dict | None = None, entries: dict | None = None, progress=None,
                    adjust_target_mm: float = 2.5) -> dict:
    """{side: SidePlan} for 'left' and 'right'. Targets: suggested from ``segmentation`` (label map
    space, moved to the world by ``world_from_segmentation``) unless given in ``targets`` (world RAS);
    entries: the best of the search unless given in ``entries`` (then that trajectory is scored).
    When no entry to the suggested target keeps ``margin_mm`` (a vein next to the target, within the
    microelectrode spread, blocks every path), the target is moved by at most ``adjust_target_mm`` inside
    the STN to the nearest point from which a safe entry exists (plan ``target_adjustment`` says so);
    a side with a surgeon's target or entry is never moved."""
    out = {}
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    for k, side in enumerate(("left", "right")):
        sub = progress.sub(k / 2, (k + 1) / 2) if progress is not None else None
        if targets and side in targets:
            target = np.asarray(targets[side], float)
        else:
            target = _apply(w, suggest_target(segmentation, side))
        search = search_entries(target, side, risk, margin_mm, landmarks, instruments, progress=sub)
        adjustment = None
        surgeon = bool((targets and side in targets) or (entries and side in entries))
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
        if entries and side in entries:
            chosen = score_trajectory(target, entries[side], risk, side, margin_mm, instruments, landmarks,
                                      label="surgeon's entry")
        else:
            chosen = search.best
            chosen.label = "suggested (candidate 1)"
        placement = place_electrode(electrode, target, chosen.entry_ras, side, segmentation=segmentation,
                                    world_from_segmentation=w)
        d = side_plan_dict(target, chosen.entry_ras, xyz_from_world, landmarks, mounting, side)
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
        out[side] = SidePlan(side, target, search, chosen, placement, d)
    return out
