"""A trajectory plan as a JSON-ready dict in which every number names its coordinate system."""
from __future__ import annotations

import numpy as np

from .coordinates import MOUNTINGS, acpc_coordinates, acpc_readout, mer_tracks, ring_arc
from .geometry import apply, ras_to_lps

COORDINATE_SYSTEMS = {
    "RAS": "image/world RAS mm as in 3D Slicer (+R right, +A anterior, +S superior)",
    "LPS": "DICOM patient coordinates mm (L = -R, P = -A, S = S) of the same space as RAS",
    "LeksellXYZ": "Leksell frame mm (+X patient's left, +Y anterior, +Z inferior, centre 100/100/100)",
    "ACPC": "mm from the mid-commissural point (+x right, +y anterior, +z superior), "
            "from the AC, PC and mid-sagittal landmarks",
}


def _vec(v):
    return [float(x) for x in np.asarray(v, float).reshape(3)]


def _point(p_ras, xyz_from_ras, landmarks):
    d = {"RAS_mm": _vec(p_ras), "LPS_mm": _vec(ras_to_lps(p_ras))}
    if xyz_from_ras is not None:
        d["LeksellXYZ_mm"] = _vec(apply(xyz_from_ras, p_ras))
    if landmarks is not None:
        c = acpc_coordinates(p_ras, landmarks["AC"], landmarks["PC"], landmarks["MS"])
        d["ACPC_mm"] = _vec(c)
        d["ACPC_readout"] = acpc_readout(c)
    return d


def plan_to_dict(target_ras, entry_ras, xyz_from_ras=None, mounting: str = "lateral-right",
                 landmarks: dict | None = None, spacing_mm: float = 2.0, pattern: str = "cross",
                 side: str | None = None, frame_source: str | None = None) -> dict:
    """Plan of one trajectory: target and entry in RAS, LPS, Leksell XYZ (when ``xyz_from_ras``, the
    image RAS -> Leksell XYZ 4x4, is known) and AC-PC (when ``landmarks`` has AC, PC, MS in the same
    RAS), length, ring/arc for ``mounting`` (and for every mounting), and the MER track end points."""
    t, e = np.asarray(target_ras, float).reshape(3), np.asarray(entry_ras, float).reshape(3)
    if landmarks is not None and not all(k in landmarks for k in ("AC", "PC", "MS")):
        missing = [k for k in ("AC", "PC", "MS") if k not in landmarks]
        raise ValueError(f"landmarks lack {', '.join(missing)}")
    m = None if xyz_from_ras is None else np.asarray(xyz_from_ras, float)
    out = {
        "coordinate_systems": COORDINATE_SYSTEMS,
        "target": _point(t, m, landmarks),
        "entry": _point(e, m, landmarks),
        "length_mm": float(np.linalg.norm(e - t)),
        "direction_RAS": _vec((e - t) / np.linalg.norm(e - t)),
    }
    if landmarks is not None:
        out["landmarks_RAS_mm"] = {k: _vec(landmarks[k]) for k in ("AC", "PC", "MS")}
        out["ACPC_definition"] = ("origin = (AC + PC) / 2 of the landmarks as placed (centres or the posterior "
                                  "edge of AC / anterior edge of PC move it by ~1 mm); y along PC->AC, "
                                  "x = y x (MS - PC) (right), z = x x y (superior)")
    if m is not None:
        t_xyz, e_xyz = apply(m, t), apply(m, e)
        ra = ring_arc(t_xyz, e_xyz, mounting)
        out["frame"] = {
            "system": "Leksell G",
            "xyz_from_ras": m.tolist(),
            "xyz_from_ras_note": "4x4 mapping image RAS mm to Leksell XYZ mm",
            "source": frame_source,
            "mounting": mounting, "ring_deg": ra.ring_deg, "arc_deg": ra.arc_deg,
            "all_mountings": {mt: {"ring_deg": r.ring_deg, "arc_deg": r.arc_deg}
                              for mt in MOUNTINGS for r in [ring_arc(t_xyz, e_xyz, mt)]},
        }
    else:
        out["frame"] = None
    tracks = mer_tracks(t, e, spacing_mm=spacing_mm, pattern=pattern, xyz_from_ras=m, mounting=mounting,
                        side=side)
    out["mer_tracks"] = {
        "pattern": pattern, "spacing_mm": float(spacing_mm),
        "axes_from": f"arc kinematics, {mounting} mounting" if m is not None
        else "arc kinematics assuming image RAS axes aligned with the frame (no frame given)",
        "tracks": {name: {"target": _point(tr["target_ras"], m, None),
                          "entry": _point(tr["entry_ras"], m, None)} for name, tr in tracks.items()},
    }
    return out
