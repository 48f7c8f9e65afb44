"""Stereotactic frame systems with N-localizers: Leksell G, CRW and BRW.

Every system is described in its own *frame RAS* space: mm, RAS axes (+R patient's right, +A anterior,
+S superior) aligned with the frame, origin at the frame's coordinate origin. Each system also has its
*native* coordinates, the numbers a surgeon dials in:

  Leksell G   X, Y, Z  (+X left, +Y anterior, +Z inferior; centre 100/100/100):  X = 100 - R, Y = A + 100,
              Z = 100 - S  (shared notes, four open implementations agree)
  CRW, BRW    LAT, AP, VERT (+LAT right, +AP anterior, +VERT superior) = R, A, S of frame RAS, origin at
              the localizer's coordinate origin (signs: Sedrak et al., Cureus 2020, Table 4)

Each localizer is three (MR boxes: four) N-shaped plates: two parallel rods and a diagonal running from
one end of the ``first`` rod to the far end of the ``second`` rod. On any plane crossing a plate,
Brown's ratio f = |b - a| / |c - a| of the three crossings (a first, b diagonal, c second) places the
diagonal's crossing at ``diagonal_start + f (diagonal_end - diagonal_start)`` (Brown 1979).

Rod positions (docs/frames.md has the table and the sources):
  Leksell G  box, lateral plates R = +-95, rods A = +-60; anterior plate A = +115, rods R = +-60;
             rods S = -60..60 (the project's Leksell notes, from Elekta's box drawing as used by the four
             open implementations); MR boxes add a posterior plate at A = -115.
  CRW        box, lateral plates R = +-100, rods A = +-60; anterior plate A = +105, rods R = +-60;
             rods S = -60..60 (trajectoryGuide's CRW localizer model, Gilmore et al.).
  BRW        six rods on a circle of radius 140 mm at 0, 60, ..., 300 degrees; N-plates on the posterior
             side (A = -121.25) and the two anterior-lateral sides; rods S = -86..103
             (trajectoryGuide's BRW localizer model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .geometry import ALL_PLATES as LEKSELL_PLATES_XYZ
from .geometry import FRAMERAS_FROM_XYZ, XYZ_FROM_FRAMERAS, LocalizerPlate, apply


@dataclass(frozen=True)
class FrameSystem:
    """One frame system: its localizer plates in frame RAS mm and its native coordinates."""
    key: str                      # "leksell", "crw", "brw"
    name: str                     # shown to the user: "Leksell G", "CRW", "BRW"
    plates: dict                  # {plate name: LocalizerPlate in frame RAS mm}
    native_from_frameras: np.ndarray   # 4x4, frame RAS mm -> native coordinates
    native_axes: tuple            # names of the native coordinates, in order
    native_note: str
    required_plates: tuple        # plates of the usual CT localizer (the rest are optional)
    rod_width_mm: float           # distance between an N's parallel rods
    rod_height_mm: float          # length of the parallel rods
    sources: tuple = field(default_factory=tuple)

    @property
    def frameras_from_native(self) -> np.ndarray:
        return np.linalg.inv(self.native_from_frameras)

    @property
    def diagonal_angle_deg(self) -> float:
        """Angle between an N's diagonal and its parallel rods."""
        return float(np.degrees(np.arctan2(self.rod_width_mm, self.rod_height_mm)))

    def native_from_ras(self, frameras_from_ras) -> np.ndarray:
        """4x4 image RAS -> native coordinates for a frame RAS pose ``frameras_from_ras``."""
        return self.native_from_frameras @ np.asarray(frameras_from_ras, float)

    def frameras_from_ras(self, native_from_ras) -> np.ndarray:
        return self.frameras_from_native @ np.asarray(native_from_ras, float)

    def native(self, point_frameras) -> np.ndarray:
        return apply(self.native_from_frameras, point_frameras)


def _plate(name, first, second, bottom, top, diagonal_from_top_of_first=True):
    """An N-plate from the (R, A) positions of its two rods and their S extent (frame RAS).
    The diagonal runs from ``first``'s top to ``second``'s bottom (or bottom to top)."""
    f0, f1 = np.array([*first, bottom]), np.array([*first, top])
    s0, s1 = np.array([*second, bottom]), np.array([*second, top])
    diag = (f1, s0) if diagonal_from_top_of_first else (f0, s1)
    return LocalizerPlate(name, first=(tuple(f1), tuple(f0)), diagonal=tuple(map(tuple, diag)),
                          second=(tuple(s1), tuple(s0)))


def _leksell_plates() -> dict:
    """The Leksell G plates (the MR boxes' posterior plate too) moved to frame RAS."""
    out = {}
    for name, plate in LEKSELL_PLATES_XYZ.items():
        rods = [tuple(tuple(apply(FRAMERAS_FROM_XYZ, np.asarray(p, float))) for p in rod)
                for rod in (plate.first, plate.diagonal, plate.second)]
        out[name] = LocalizerPlate(name, *rods)
    return out


_BRW_R = 140.0
_BRW_X, _BRW_Y = 70.0, 121.25            # rod at 60 degrees: (140 cos 60, 140 sin 60) as trajectoryGuide rounds it

SYSTEMS = {
    "leksell": FrameSystem(
        key="leksell", name="Leksell G", plates=_leksell_plates(),
        native_from_frameras=XYZ_FROM_FRAMERAS.copy(), native_axes=("X", "Y", "Z"),
        native_note="Leksell XYZ mm: +X patient's left, +Y anterior, +Z inferior, frame centre 100/100/100",
        required_plates=("right", "left", "anterior"), rod_width_mm=120.0, rod_height_mm=120.0,
        sources=("Leksell G coordinate frame: project notes (docs/frames.md), SlicerNetstim, SlicerStereotactic, "
                 "trajectoryGuide",)),
    "crw": FrameSystem(
        key="crw", name="CRW", plates={
            "right": _plate("right", (100.0, 60.0), (100.0, -60.0), -60.0, 60.0),
            "left": _plate("left", (-100.0, -60.0), (-100.0, 60.0), -60.0, 60.0),
            "anterior": _plate("anterior", (-60.0, 105.0), (60.0, 105.0), -60.0, 60.0),
        },
        native_from_frameras=np.eye(4), native_axes=("LAT", "AP", "VERT"),
        native_note="CRW LAT, AP, VERT mm: +LAT patient's right, +AP anterior, +VERT superior, origin at the "
                    "centre of the CT localizer",
        required_plates=("right", "left", "anterior"), rod_width_mm=120.0, rod_height_mm=120.0,
        sources=("trajectoryGuide CRW localizer model (Gilmore et al., github greydongilmore/trajectoryGuide)",
                 "Sedrak et al., Cureus 2020;12(6):e8578 (CRW AP/LAT/VERT signs)")),
    "brw": FrameSystem(
        key="brw", name="BRW", plates={
            "posterior": _plate("posterior", (_BRW_X, -_BRW_Y), (-_BRW_X, -_BRW_Y), -86.0, 103.0),
            "right-anterior": _plate("right-anterior", (_BRW_X, _BRW_Y), (_BRW_R, 0.0), -86.0, 103.0),
            "left-anterior": _plate("left-anterior", (-_BRW_R, 0.0), (-_BRW_X, _BRW_Y), -86.0, 103.0),
        },
        native_from_frameras=np.eye(4), native_axes=("LAT", "AP", "VERT"),
        native_note="BRW LAT, AP, VERT mm: +LAT patient's right, +AP anterior, +VERT superior, origin at the "
                    "axis of the localizer's rod circle (VERT 0 86 mm above the rods' lower ends)",
        required_plates=("posterior", "right-anterior", "left-anterior"), rod_width_mm=140.0,
        rod_height_mm=189.0,
        sources=("trajectoryGuide BRW localizer model (Gilmore et al., github greydongilmore/trajectoryGuide)",
                 "Brown RA, J Neurosurg 1979;50:715-720 (N-localizer)")),
}

ALIASES = {"leksell": "leksell", "leksell g": "leksell", "leksellg": "leksell", "g": "leksell",
           "crw": "crw", "brw": "brw"}


def get_system(name) -> FrameSystem:
    """The FrameSystem called ``name`` ('leksell', 'crw', 'brw'; case-insensitive), or an InputError."""
    if isinstance(name, FrameSystem):
        return name
    key = ALIASES.get(str(name).strip().lower())
    if key is None:
        raise InputError(f"unknown frame system {name!r}; expected one of {', '.join(SYSTEMS)}")
    return SYSTEMS[key]


def diagonal_point(plate: LocalizerPlate, fraction) -> np.ndarray:
    """Brown's formula: the diagonal's point (plate coordinates) at ``fraction`` of the way from the
    first rod to the second; ``fraction`` may be an array."""
    s, e = (np.asarray(p, float) for p in plate.diagonal)
    f = np.asarray(fraction, float)
    return s + f[..., None] * (e - s)
