"""A quick synthetic head for planning benchmarks and smoke tests (not the digital patient).

Ellipsoid brain, both STNs (label values 2/1 = STN_R/STN_L), SN and RN blobs, a GP-like paramagnetic
blob per side, lateral ventricles as ellipsoids, cortical veins on the convexity, and optionally a vein
across each side's straight standard trajectory (60° above the axial plane, 20° lateral) 40 mm above
the target. RAS = scanner axes; χ in ppm.
"""
from __future__ import annotations

import numpy as np

from ..volume import Volume, ras_from_ijk_matrix
from .trajectory import direction_from_angles

STN_CENTRES = {"left": np.array([-12.0, -3.0, -5.0]), "right": np.array([12.0, -3.0, -5.0])}


def _segment_distance(points, a, b):
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(points - (a + t[..., None] * ab), axis=-1)


def synthetic_head(shape=(192, 224, 160), voxel_mm: float = 1.0, seed: int = 0,
                   veins_on_standard: bool = True) -> dict:
    """{'chi', 'brain', 'labels' (1..6 nuclei), 'ventricles', 'veins' (truth), 'stn_centres'} Volumes."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    origin = -(np.array(shape) - 1) / 2.0 * voxel_mm + np.array([0.0, -10.0, 5.0])
    vol = Volume(np.zeros(shape, np.float32), ras_from_ijk_matrix((voxel_mm,) * 3, origin=origin))
    ras = vol.voxel_ras_grid().astype(np.float32)
    brain = ((ras[..., 0] / 66) ** 2 + ((ras[..., 1] + 10) / 82) ** 2 + ((ras[..., 2] - 5) / 62) ** 2) <= 1
    chi = (rng.normal(0, 0.01, shape) * brain).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    veins = np.zeros(shape, bool)
    for side, s in (("left", -1.0), ("right", 1.0)):
        c = STN_CENTRES[side]
        for value, centre, radii, chi_v in (((2 if side == "right" else 1), c, (6.0, 4.5, 3.0), 0.09),
                                            ((4 if side == "right" else 3), c + [-3 * s, -6, -3], (5, 7, 3), 0.15),
                                            ((6 if side == "right" else 5), c + [-7 * s, -5, -2], (3, 3, 3), 0.12)):
            rho = np.sqrt((((ras - centre) / np.array(radii, np.float32)) ** 2).sum(-1))
            labels[(rho <= 1) & (labels == 0)] = value
            chi += chi_v * np.clip((1.25 - rho) / 0.5, 0, 1)  # partial-volume edge
        r_gp = np.linalg.norm(ras - (c + [10 * s, 8, 7]), axis=-1)
        chi += 0.2 * np.clip((6.0 - r_gp) / 2.0, 0, 1)
        if veins_on_standard:
            u = direction_from_angles(60.0, 20.0, side)
            p = c + 40.0 * u
            w = np.cross(u, [1.0, 0, 0])
            w /= np.linalg.norm(w)
            veins |= _segment_distance(ras, p - 15 * w, p + 15 * w) <= 1.2
    # cortical veins on the convexity (run antero-posteriorly, 3 mm under the surface)
    for x in (-50.0, 50.0):
        z = 5 + 62 * np.sqrt(max(1 - (x / 66) ** 2, 0)) - 6
        a, b = np.array([x, -50.0, z - 10]), np.array([x, 30.0, z - 6])
        veins |= (_segment_distance(ras, a, b) <= 1.0) & brain
    chi[veins] += 0.45
    vent = np.zeros(shape, bool)
    for s in (-1.0, 1.0):
        vent |= (((ras - np.array([8 * s, 0.0, 18.0])) / np.array([5.0, 22.0, 7.0])) ** 2).sum(-1) <= 1
    chi[vent] = rng.normal(0, 0.01, int(vent.sum()))
    m = vol.ras_from_ijk
    return {"chi": Volume(chi, m.copy(), "chi"), "brain": Volume(brain.astype(np.uint8), m.copy(), "brain"),
            "labels": Volume(labels, m.copy(), "nuclei"), "ventricles": Volume(vent.astype(np.uint8), m.copy(),
                                                                             "ventricles"),
            "veins": Volume(veins.astype(np.uint8), m.copy(), "veins"), "stn_centres": STN_CENTRES}
