"""A trajectory plan as a JSON-ready dict in which every number names its coordinate system, for the
frame that was registered (Leksell G, CRW or BRW)."""
from __future__ import annotations

import numpy as np

from .coordinates import MOUNTINGS, acpc_coordinates, acpc_readout, mer_tracks, ring_arc
from .frames import get_system
from .geometry import apply, ras_to_lps

COORDINATE_SYSTEMS = {
    "RAS": "image/world RAS mm as in 3D Slicer (+R right, +A anterior, +S superior)",
    "LPS": "DICOM patient coordinates mm (L = -R, P = -A, S = S) of the same space as RAS",
    "LeksellXYZ": "Leksell frame mm (+X patient's left, +Y anterior, +Z inferior, centre 100/100/100)",
    "CRW": "CRW frame mm: LAT (+ patient's right), AP (+ anterior), VERT (+ superior) from the localizer centre",
    "BRW": "BRW frame mm: LAT (+ patient's right), AP (+ anterior), VERT (+ superior) from the localizer's origin",
    "ACPC": "mm from the mid-commissural point (+x right, +y anterior, +z superior), "
            "from the AC, PC and mid-sagittal landmarks",
}
ARC_NOT_PROVIDED = ("not provided: the zero points and signs of the CRW/BRW ring, arc and collar scales were "
                    "not found in a primary source; set the arc from the AP, LAT, VERT of target and entry on "
                    "the phantom base")


def _vec(v):
    return [float(x) for x in np.asarray(v, float).reshape(3)]


def _native_key(system) -> str:
    return "LeksellXYZ_mm" if system.key == "leksell" else f"{system.name}_mm"


def _native(system, xyz):
    return _vec(xyz) if system.key == "leksell" else dict(zip(("LAT", "AP", "VERT"), _vec(xyz)))


def _point(p_ras, xyz_from_ras, landmarks, system):
    d = {"RAS_mm": _vec(p_ras), "LPS_mm": _vec(ras_to_lps(p_ras))}
    if xyz_from_ras is not None:
        d[_native_key(system)] = _native(system, apply(xyz_from_ras, p_ras))
    if landmarks is not None:
        c = acpc_coordinates(p_ras, landmarks["AC"], landmarks["PC"], landmarks["MS"])
        d["ACPC_mm"] = _vec(c)
        d["ACPC_readout"] = acpc_readout(c)
    return d


def frame_readout(target_ras, entry_ras, xyz_from_ras, system="leksell", mounting: str = "lateral-right") -> dict:
    """What to set on the frame for the trajectory ``target_ras`` -> ``entry_ras`` (image RAS mm) with
    the registration ``xyz_from_ras`` (image RAS -> the system's native coordinates).

    Leksell G: X, Y, Z of target and entry, ring and arc for ``mounting`` and for every mounting.
    CRW, BRW: LAT, AP, VERT of target and entry, the phantom-base settings (the target's AP, LAT, VERT),
    the target->entry direction in frame axes; arc settings are not provided (see ``ARC_NOT_PROVIDED``).
    """
    system = get_system(system)
    m = np.asarray(xyz_from_ras, float)
    t_xyz, e_xyz = apply(m, np.asarray(target_ras, float)), apply(m, np.asarray(entry_ras, float))
    out = {"system": system.name, "system_key": system.key, "coordinates": system.native_note,
           "target": _native(system, t_xyz), "entry": _native(system, e_xyz)}
    if system.key == "leksell":
        ra = ring_arc(t_xyz, e_xyz, mounting)
        out.update({"mounting": mounting, "ring_deg": ra.ring_deg, "arc_deg": ra.arc_deg,
                    "all_mountings": {mt: {"ring_deg": r.ring_deg, "arc_deg": r.arc_deg}
                                      for mt in MOUNTINGS for r in [ring_arc(t_xyz, e_xyz, mt)]}})
    else:
        u = (e_xyz - t_xyz) / np.linalg.norm(e_xyz - t_xyz)
        out.update({"arc_settings": {"provided": False, "reason": ARC_NOT_PROVIDED},
                    "phantom_base": {"AP": float(t_xyz[1]), "LAT": float(t_xyz[0]), "VERT": float(t_xyz[2]),
                                     "note": "set the phantom base's target point to the target's AP, LAT, VERT "
                                             "and check that the probe of the arc, set for this trajectory, "
                                             "touches it"},
                    "direction_frame": {"LAT": float(u[0]), "AP": float(u[1]), "VERT": float(u[2]),
                                        "note": "unit vector target -> entry in frame axes"}})
    return out


def _frame_axes_tracks(t, e, image_from_frame_rot, spacing_mm, pattern, side):
    """MER tracks with offset axes from the frame's axes (no arc kinematics): lateral = the frame's R
    axis made perpendicular to the path, away from the midline; anterior = path x lateral, toward +A."""
    from .coordinates import _CROSS, _GRID
    u = (e - t) / np.linalg.norm(e - t)
    r_axis, a_axis = image_from_frame_rot[:, 0], image_from_frame_rot[:, 1]
    lat = r_axis - (r_axis @ u) * u
    lat /= np.linalg.norm(lat)
    if side in ("left", "L"):
        lat = -lat
    ant = np.cross(u, lat)
    ant *= 1.0 if ant @ a_axis >= 0 else -1.0
    return {name: {"target_ras": t + spacing_mm * (ia * ant + il * lat),
                   "entry_ras": e + spacing_mm * (ia * ant + il * lat)}
            for name, (ia, il) in (_CROSS if pattern == "cross" else _GRID).items()}


def plan_to_dict(target_ras, entry_ras, xyz_from_ras=None, mounting: str = "lateral-right",
                 landmarks: dict | None = None, spacing_mm: float = 2.0, pattern: str = "cross",
                 side: str | None = None, frame_source: str | None = None, system="leksell") -> dict:
    """Plan of one trajectory: target and entry in RAS, LPS, the frame's coordinates (when
    ``xyz_from_ras``, image RAS -> the native coordinates of ``system``, is known) and AC-PC (when
    ``landmarks`` has AC, PC, MS in the same RAS), length, the frame settings (``frame_readout``) and the
    MER track end points."""
    system = get_system(system)
    t, e = np.asarray(target_ras, float).reshape(3), np.asarray(entry_ras, float).reshape(3)
    if landmarks is not None and not all(k in landmarks for k in ("AC", "PC", "MS")):
        missing = [k for k in ("AC", "PC", "MS") if k not in landmarks]
        raise ValueError(f"landmarks lack {', '.join(missing)}")
    m = None if xyz_from_ras is None else np.asarray(xyz_from_ras, float)
    out = {
        "coordinate_systems": COORDINATE_SYSTEMS,
        "target": _point(t, m, landmarks, system),
        "entry": _point(e, m, landmarks, system),
        "length_mm": float(np.linalg.norm(e - t)),
        "direction_RAS": _vec((e - t) / np.linalg.norm(e - t)),
    }
    if landmarks is not None:
        out["landmarks_RAS_mm"] = {k: _vec(landmarks[k]) for k in ("AC", "PC", "MS")}
        out["ACPC_definition"] = ("origin = (AC + PC) / 2 of the landmarks as placed (centres or the posterior "
                                  "edge of AC / anterior edge of PC move it by ~1 mm); y along PC->AC, "
                                  "x = y x (MS - PC) (right), z = x x y (superior)")
    if m is not None:
        out["frame"] = dict(frame_readout(t, e, m, system, mounting), xyz_from_ras=m.tolist(),
                            xyz_from_ras_note=f"4x4 mapping image RAS mm to {system.name} "
                                              f"{', '.join(system.native_axes)} mm",
                            source=frame_source)
    else:
        out["frame"] = None
    if m is None or system.key == "leksell":
        tracks = mer_tracks(t, e, spacing_mm=spacing_mm, pattern=pattern, xyz_from_ras=m, mounting=mounting,
                            side=side)
        axes_from = (f"arc kinematics, {mounting} mounting" if m is not None
                     else "arc kinematics assuming image RAS axes aligned with the frame (no frame given)")
    else:
        image_from_frame = np.linalg.inv(system.frameras_from_native @ m)
        if side is None:
            side = "right" if apply(m, t)[0] >= 0 else "left"
        tracks = _frame_axes_tracks(t, e, image_from_frame[:3, :3], spacing_mm, pattern, side)
        axes_from = f"{system.name} frame axes (lateral along the frame's LAT axis, anterior along AP)"
    out["mer_tracks"] = {
        "pattern": pattern, "spacing_mm": float(spacing_mm), "axes_from": axes_from,
        "tracks": {name: {"target": _point(tr["target_ras"], m, None, system),
                          "entry": _point(tr["entry_ras"], m, None, system)} for name, tr in tracks.items()},
    }
    return out
