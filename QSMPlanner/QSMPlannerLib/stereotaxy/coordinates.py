"""Leksell ring/arc angles for every mounting, AC-PC coordinates and microelectrode (Ben-gun) tracks.

Leksell XYZ mm: +X patient's left, +Y anterior, +Z inferior, frame centre (100, 100, 100).
Angles are degrees. u = unit vector from target to entry (Leksell XYZ unless stated):

  lateral-right       u = (-cos a,  sin a cos r, -sin a sin r)            (XYZ)
  lateral-left        u = ( cos a, -sin a cos r, -sin a sin r)            (XYZ)  r_L = 180 - r_R, a_L = 180 - a_R
  sagittal-anterior   u = (-sin a cos r,  cos a, sin a sin r)             (frame RAS)
  sagittal-posterior  u = ( sin a cos r, -cos a, sin a sin r)             (frame RAS)

Frame RAS = (100 - X, Y - 100, 100 - Z), so a frame-RAS direction (dR, dA, dS) is (-dX, dY, -dZ).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import InputError
from .geometry import XYZ_FROM_FRAMERAS, apply

MOUNTINGS = ("lateral-right", "lateral-left", "sagittal-anterior", "sagittal-posterior")
ARC_RADIUS_MM = 190.0
_XYZ_FROM_FRAMERAS_DIR = XYZ_FROM_FRAMERAS[:3, :3]   # diag(-1, 1, -1), its own inverse


def _check_mounting(mounting: str) -> str:
    if mounting not in MOUNTINGS:
        raise InputError(f"unknown mounting {mounting!r}; expected one of {', '.join(MOUNTINGS)}")
    return mounting


@dataclass
class RingArc:
    """Leksell ring and arc angles (degrees) of a target->entry direction for one mounting."""
    ring_deg: float
    arc_deg: float
    mounting: str
    length_mm: float

    def __iter__(self):               # ring, arc = ring_arc(...)
        return iter((self.ring_deg, self.arc_deg))

    def __getitem__(self, i):
        return (self.ring_deg, self.arc_deg)[i]

    def to_dict(self) -> dict:
        return asdict(self)


def direction_from_ring_arc(ring_deg: float, arc_deg: float, mounting: str = "lateral-right") -> np.ndarray:
    """Unit target->entry direction in Leksell XYZ for ``ring_deg``/``arc_deg`` on ``mounting``."""
    _check_mounting(mounting)
    r, a = np.deg2rad(float(ring_deg)), np.deg2rad(float(arc_deg))
    ca, sa, cr, sr = np.cos(a), np.sin(a), np.cos(r), np.sin(r)
    if mounting == "lateral-right":
        return np.array([-ca, sa * cr, -sa * sr])
    if mounting == "lateral-left":
        return np.array([ca, -sa * cr, -sa * sr])
    if mounting == "sagittal-anterior":
        u_ras = np.array([-sa * cr, ca, sa * sr])
    else:
        u_ras = np.array([sa * cr, -ca, sa * sr])
    return _XYZ_FROM_FRAMERAS_DIR @ u_ras


def _arc_derivative(ring_deg, arc_deg, mounting) -> np.ndarray:
    """d u / d arc (per radian) in Leksell XYZ: the axis the arc carriage moves the needle along."""
    r, a = np.deg2rad(float(ring_deg)), np.deg2rad(float(arc_deg))
    ca, sa, cr, sr = np.cos(a), np.sin(a), np.cos(r), np.sin(r)
    if mounting == "lateral-right":
        return np.array([sa, ca * cr, -ca * sr])
    if mounting == "lateral-left":
        return np.array([-sa, -ca * cr, -ca * sr])
    if mounting == "sagittal-anterior":
        d_ras = np.array([-ca * cr, -sa, ca * sr])
    else:
        d_ras = np.array([ca * cr, sa, ca * sr])
    return _XYZ_FROM_FRAMERAS_DIR @ d_ras


def ring_arc(target_xyz, entry_xyz, mounting: str = "lateral-right") -> RingArc:
    """Ring and arc (degrees) reaching ``target_xyz`` from ``entry_xyz`` (both Leksell XYZ mm) on
    ``mounting``. Arc in [0, 180]; ring in (-180, 180] (values outside the ring's physical range
    mean the trajectory is not reachable on that mounting)."""
    _check_mounting(mounting)
    t, e = np.asarray(target_xyz, float), np.asarray(entry_xyz, float)
    d = e - t
    length = float(np.linalg.norm(d))
    if not np.isfinite(length) or length < 1e-6:
        raise InputError("target and entry coincide: no trajectory direction")
    u = d / length
    if mounting in ("lateral-right", "lateral-left"):
        ux, uy, uz = u
        if mounting == "lateral-right":
            arc = np.degrees(np.arccos(np.clip(-ux, -1, 1)))
            ring = np.degrees(np.arctan2(-uz, uy))
        else:
            arc = np.degrees(np.arccos(np.clip(ux, -1, 1)))
            ring = np.degrees(np.arctan2(-uz, -uy))
    else:
        ur, ua, us = _XYZ_FROM_FRAMERAS_DIR @ u   # frame RAS direction
        if mounting == "sagittal-anterior":
            arc = np.degrees(np.arccos(np.clip(ua, -1, 1)))
            ring = np.degrees(np.arctan2(us, -ur))
        else:
            arc = np.degrees(np.arccos(np.clip(-ua, -1, 1)))
            ring = np.degrees(np.arctan2(us, ur))
    if ring <= -180.0:
        ring += 360.0
    return RingArc(float(ring), float(arc), mounting, length)


def trajectory_from_ring_arc(target_xyz, ring_deg: float, arc_deg: float, mounting: str = "lateral-right",
                             length_mm: float = ARC_RADIUS_MM) -> np.ndarray:
    """Entry point (Leksell XYZ mm) ``length_mm`` from ``target_xyz`` along the ring/arc direction of
    ``mounting`` (default: on the 190 mm arc)."""
    return np.asarray(target_xyz, float) + float(length_mm) * direction_from_ring_arc(ring_deg, arc_deg,
                                                                                       mounting)


# ---- AC-PC --------------------------------------------------------------------------------------
def acpc_from_ras(ac, pc, ms) -> np.ndarray:
    """4x4 rigid map RAS mm -> AC-PC mm (origin mid-commissural point; +x right, +y anterior,
    +z superior). ``ms``: any mid-sagittal point off the AC-PC line (above it, by convention)."""
    ac, pc, ms = (np.asarray(v, float).reshape(3) for v in (ac, pc, ms))
    y = ac - pc
    n = np.linalg.norm(y)
    if n < 1e-6:
        raise InputError("AC and PC coincide")
    y /= n
    x = np.cross(y, ms - pc)
    nx = np.linalg.norm(x)
    if nx < 1e-6 * max(1.0, np.linalg.norm(ms - pc)):
        raise InputError("the mid-sagittal point lies on the AC-PC line")
    x /= nx
    z = np.cross(x, y)
    rot = np.stack([x, y, z])
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = -rot @ ((ac + pc) / 2.0)
    return m


def acpc_coordinates(p, ac, pc, ms) -> np.ndarray:
    """AC-PC coordinates (mm) of RAS point(s) ``p`` (..., 3): signed (x + right, y + anterior,
    z + superior) from the mid-commissural point. AC, PC, MS in the same RAS space as ``p``."""
    return apply(acpc_from_ras(ac, pc, ms), p)


def acpc_readout(c) -> dict:
    """Surgical readout of one signed AC-PC coordinate: unsigned lateral with its side, signed AP
    (negative = posterior of the MCP) and signed vertical (negative = inferior)."""
    c = np.asarray(c, float).reshape(3)
    return {"lateral_mm": float(abs(c[0])), "side": "right" if c[0] >= 0 else "left",
            "ap_mm": float(c[1]), "vertical_mm": float(c[2])}


# ---- microelectrode tracks ----------------------------------------------------------------------
_CROSS = {"central": (0, 0), "anterior": (1, 0), "posterior": (-1, 0), "medial": (0, -1), "lateral": (0, 1)}
_GRID = dict(_CROSS, **{"anterior-medial": (1, -1), "anterior-lateral": (1, 1),
                        "posterior-medial": (-1, -1), "posterior-lateral": (-1, 1)})


def mer_axes_xyz(target_xyz, entry_xyz, mounting: str = "lateral-right", side: str | None = None):
    """Unit (anterior, lateral) offset axes of the Ben-gun in Leksell XYZ, perpendicular to the
    trajectory, from the arc kinematics: one axis is d u / d arc (the arc plane), the other
    u x (d u / d arc) (the ring). Each is labelled anatomically (the one more along X is
    medial-lateral) and signed: anterior = +Y, lateral = away from the midline (X = 100 unless
    ``side`` 'left'/'right' names the hemisphere)."""
    t, e = np.asarray(target_xyz, float), np.asarray(entry_xyz, float)
    ra = ring_arc(t, e, mounting)
    u = (e - t) / ra.length_mm
    e_arc = _arc_derivative(ra.ring_deg, ra.arc_deg, mounting)
    e_arc -= (e_arc @ u) * u
    e_arc /= np.linalg.norm(e_arc)
    e_ring = np.cross(u, e_arc)
    if abs(e_arc[0]) >= abs(e_ring[0]):
        lat, ant = e_arc, e_ring
    else:
        lat, ant = e_ring, e_arc
    if side is None:
        side = "left" if t[0] > 100.0 else "right"
    lateral_sign = 1.0 if side in ("left", "L") else -1.0   # patient's left is +X
    lat = lat * (1.0 if lat[0] * lateral_sign >= 0 else -1.0)
    ant = ant * (1.0 if ant[1] >= 0 else -1.0)
    return ant, lat


def mer_tracks(target_ras, entry_ras, spacing_mm: float = 2.0, pattern: str = "cross",
               xyz_from_ras=None, mounting: str = "lateral-right", side: str | None = None) -> dict:
    """Microelectrode tracks parallel to the planned one, ``spacing_mm`` apart (Ben-gun).

    ``pattern`` 'cross' (central, anterior, posterior, medial, lateral) or 'grid' (3x3). Points are
    RAS mm in, RAS mm out; the offset axes come from the arc kinematics of ``mounting`` in the frame
    given by ``xyz_from_ras`` (image RAS -> Leksell XYZ; None: image RAS axes are frame-aligned).
    ``side``: hemisphere of the target ('left'/'right'); default from the frame midline (X = 100)
    or, without a frame, from the sign of R. Returns {name: {"target_ras": [3], "entry_ras": [3]}}.
    """
    if pattern not in ("cross", "grid"):
        raise InputError(f"unknown MER pattern {pattern!r}; expected 'cross' or 'grid'")
    t_ras, e_ras = np.asarray(target_ras, float), np.asarray(entry_ras, float)
    if xyz_from_ras is None:
        m = XYZ_FROM_FRAMERAS
        if side is None:
            side = "right" if t_ras[0] >= 0 else "left"
    else:
        m = np.asarray(xyz_from_ras, float)
    ant, lat = mer_axes_xyz(apply(m, t_ras), apply(m, e_ras), mounting, side)
    ras_from_xyz_dir = np.linalg.inv(m[:3, :3])
    ant_ras, lat_ras = ras_from_xyz_dir @ ant, ras_from_xyz_dir @ lat
    tracks = {}
    for name, (ia, il) in (_CROSS if pattern == "cross" else _GRID).items():
        off = spacing_mm * (ia * ant_ras + il * lat_ras)
        tracks[name] = {"target_ras": t_ras + off, "entry_ras": e_ras + off}
    return tracks
