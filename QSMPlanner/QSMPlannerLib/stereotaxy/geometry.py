"""Leksell model G geometry: frame coordinates and the N-localizer box.

Leksell XYZ (mm): +X to the patient's LEFT, +Y ANTERIOR, +Z INFERIOR, frame centre (100, 100, 100).
"Frame RAS" is an RAS space aligned with the frame whose origin is the frame centre:
R = 100 - X, A = Y - 100, S = 100 - Z.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..volume import LPS_FROM_RAS, apply  # noqa: F401  (re-exported)

# frame-aligned RAS (origin at the frame centre) from Leksell XYZ; a proper rotation (det +1)
FRAMERAS_FROM_XYZ = np.array([[-1.0, 0.0, 0.0, 100.0],
                              [0.0, 1.0, 0.0, -100.0],
                              [0.0, 0.0, -1.0, 100.0],
                              [0.0, 0.0, 0.0, 1.0]])
XYZ_FROM_FRAMERAS = np.linalg.inv(FRAMERAS_FROM_XYZ)


@dataclass(frozen=True)
class LocalizerPlate:
    """One N of a localizer: the parallel rods ``first`` and ``second`` (start, end) and the ``diagonal``
    from an end of ``first`` to the far end of ``second``, in mm of its owner's space (Leksell XYZ in
    ``PLATES`` here, frame RAS in ``frames.SYSTEMS``). On a plane crossing it, the diagonal's crossing
    lies the fraction f = |b - a| / |c - a| of the way along it (Brown's formula); here, on an axial
    slice, f = (Z - 40) / 120.
    """
    name: str
    first: tuple
    diagonal: tuple
    second: tuple

    def rods(self):
        """[(start_xyz, end_xyz)] for first, diagonal, second (numpy arrays)."""
        return [(np.asarray(a, float), np.asarray(b, float))
                for a, b in (self.first, self.diagonal, self.second)]


def _plate_lateral(name, x):
    return LocalizerPlate(name,
                          first=((x, 40.0, 40.0), (x, 40.0, 160.0)),
                          diagonal=((x, 40.0, 40.0), (x, 160.0, 160.0)),
                          second=((x, 160.0, 40.0), (x, 160.0, 160.0)))


def _plate_ap(name, y):
    return LocalizerPlate(name,
                          first=((40.0, y, 40.0), (40.0, y, 160.0)),
                          diagonal=((40.0, y, 40.0), (160.0, y, 160.0)),
                          second=((160.0, y, 40.0), (160.0, y, 160.0)))


PLATES = {
    "right": _plate_lateral("right", 5.0),
    "left": _plate_lateral("left", 195.0),
    "anterior": _plate_ap("anterior", 215.0),
}
POSTERIOR_PLATE = _plate_ap("posterior", -15.0)  # some MR boxes
ALL_PLATES = dict(PLATES, posterior=POSTERIOR_PLATE)


def segment_distance(points, a, b) -> np.ndarray:
    """Distance from points (N, 3) to the segment a-b (same mm space; a point when a == b)."""
    p, a, b = np.asarray(points, float), np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    den = float(ab @ ab)
    t = np.clip(((p - a) @ ab) / den, 0.0, 1.0) if den > 1e-12 else np.zeros(len(p))
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def ras_to_xyz(ras, xyz_from_ras=None) -> np.ndarray:
    """Image RAS mm -> Leksell XYZ mm. ``xyz_from_ras`` is the frame registration (4x4); without it
    the image RAS space is taken to be frame RAS (origin at the frame centre)."""
    m = XYZ_FROM_FRAMERAS if xyz_from_ras is None else np.asarray(xyz_from_ras, float)
    return apply(m, ras)


def xyz_to_ras(xyz, xyz_from_ras=None) -> np.ndarray:
    """Leksell XYZ mm -> image RAS mm (inverse of ``ras_to_xyz``)."""
    m = FRAMERAS_FROM_XYZ if xyz_from_ras is None else np.linalg.inv(np.asarray(xyz_from_ras, float))
    return apply(m, xyz)


def ras_to_lps(ras) -> np.ndarray:
    """RAS -> LPS (DICOM patient coordinates): (L, P, S) = (-R, -A, S)."""
    p = np.array(ras, float)
    p[..., :2] *= -1.0
    return p
