"""Both sides planned in one call: suggested target, entry search, electrode, coordinates (RAS, AC-PC,
Leksell) as a JSON-ready plan dict. World = the space of ``risk`` and of the returned points (RAS mm)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .electrodes import place_electrode
from .risk import RiskMap
from .target import suggest_target
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


def plan_both_sides(segmentation, risk: RiskMap, world_from_segmentation=None, landmarks=None,
                    xyz_from_world=None, mounting: str = "lateral-right", margin_mm: float = 3.0,
                    electrode: str = "medtronic_3389", instruments: Instruments | None = None,
                    targets: dict | None = None, entries: dict | None = None, progress=None) -> dict:
    """{side: SidePlan} for 'left' and 'right'. Targets: suggested from ``segmentation`` (label map
    space, moved to the world by ``world_from_segmentation``) unless given in ``targets`` (world RAS);
    entries: the best of the search unless given in ``entries`` (then that trajectory is scored)."""
    out = {}
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    for k, side in enumerate(("left", "right")):
        sub = progress.sub(k / 2, (k + 1) / 2) if progress is not None else None
        if targets and side in targets:
            target = np.asarray(targets[side], float)
        else:
            target = _apply(w, suggest_target(segmentation, side))
        search = search_entries(target, side, risk, margin_mm, landmarks, instruments, progress=sub)
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
        d["safety"] = chosen.to_dict()
        d["candidates"] = [c.to_dict() for c in search.candidates]
        d["standard"] = search.standard.to_dict() if search.standard is not None else None
        d["search"] = {"n_evaluated": search.n_evaluated, "n_safe": search.n_safe, "feasible": search.feasible,
                       "seconds": round(search.seconds, 3)}
        d["electrode"] = placement.to_dict()
        d["distance_profile"] = chosen.to_dict(with_profile=True).get("profile")
        out[side] = SidePlan(side, target, search, chosen, placement, d)
    return out
