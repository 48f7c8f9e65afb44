"""The patient's shape: a random smooth nonlinear deformation of the MNI anatomy, and rigid poses.

Anatomical space ("anat", RAS mm) is the patient's own head frame. ``mni = S @ anat + disp(anat)``:
``S`` a random affine (scaling ±6 %, small shear) and ``disp`` a smooth random displacement (MNI mm,
a few mm, correlation length ~30 mm) stored on a coarse grid over anat space. Each image (GRE, T1, CT)
sees the head at its own rigid pose: ``world_image = pose_image @ anat``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..volume import rotation_matrix

DISP_SPACING_MM = 8.0
DISP_BOX_MM = ((-130.0, 130.0), (-170.0, 150.0), (-190.0, 150.0))  # covers head and neck


@dataclass
class Deformation:
    mni_from_anat_affine: np.ndarray   # 4x4
    disp: np.ndarray                   # (X, Y, Z, 3) float32, MNI mm, on the coarse anat grid
    disp_origin: np.ndarray            # anat mm of disp[0, 0, 0]
    disp_spacing: float

    @property
    def dispidx_from_anat(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] /= self.disp_spacing
        m[:3, 3] = -self.disp_origin / self.disp_spacing
        return m

    def displacement(self, anat_pts) -> np.ndarray:
        p = np.atleast_2d(np.asarray(anat_pts, float))
        q = (p - self.disp_origin) / self.disp_spacing
        n = np.array(self.disp.shape[:3]) - 1.000001
        q = np.clip(q, 0.0, n)
        return np.stack([ndimage.map_coordinates(self.disp[..., c], q.T, order=1, mode="nearest")
                         for c in range(3)], -1)

    def mni_from_anat(self, anat_pts) -> np.ndarray:
        p = np.atleast_2d(np.asarray(anat_pts, float))
        a = self.mni_from_anat_affine
        return p @ a[:3, :3].T + a[:3, 3] + self.displacement(p)

    def anat_from_mni(self, mni_pts, iterations: int = 40) -> np.ndarray:
        """Inverse by fixed-point iteration (the displacement gradient is well below 1)."""
        m = np.atleast_2d(np.asarray(mni_pts, float))
        inv = np.linalg.inv(self.mni_from_anat_affine)
        p = m @ inv[:3, :3].T + inv[:3, 3]
        for _ in range(iterations):
            p = (m - self.displacement(p)) @ inv[:3, :3].T + inv[:3, 3]
        return p

    def max_jacobian_error(self) -> float:
        """Largest displacement gradient (mm/mm); < 1 keeps the map one-to-one."""
        g = [np.gradient(self.disp[..., c], self.disp_spacing) for c in range(3)]
        return float(max(np.abs(gi).max() for gc in g for gi in gc))


def random_deformation(rng: np.random.Generator, amplitude_mm: float = 4.0, scale_sd: float = 0.035,
                       corr_mm: float = 24.0) -> Deformation:
    """A random anat->MNI map: affine ``S`` (about the head centre) + smooth displacement."""
    scale = np.clip(1.0 + rng.normal(0.0, scale_sd, 3), 0.92, 1.08)
    shear = np.eye(3) + np.clip(rng.normal(0.0, 0.015, (3, 3)), -0.03, 0.03) * (1 - np.eye(3))
    lin = np.diag(1.0 / scale) @ shear  # mni = lin @ anat: a bigger head has smaller MNI coords
    centre = np.array([0.0, -18.0, 10.0])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = centre - lin @ centre
    shape = [int(round((hi - lo) / DISP_SPACING_MM)) + 1 for lo, hi in DISP_BOX_MM]
    origin = np.array([lo for lo, _ in DISP_BOX_MM])
    sigma = corr_mm / DISP_SPACING_MM
    disp = np.empty(shape + [3], np.float32)
    for c in range(3):
        f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
        disp[..., c] = f / (np.abs(f).max() + 1e-12) * amplitude_mm
    return Deformation(aff, disp, origin, DISP_SPACING_MM)


def rigid(rotation_deg, translation_mm, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """4x4 rigid RAS transform rotating by ``rotation_deg`` (about R, A, S) around ``centre``."""
    m = np.eye(4)
    r = rotation_matrix(rotation_deg)
    c = np.asarray(centre, float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(translation_mm, float)
    return m


def random_pose(rng: np.random.Generator, rot_sd_deg: float, trans_sd_mm: float,
                centre=(0.0, -18.0, 10.0)) -> np.ndarray:
    rot = np.clip(rng.normal(0.0, rot_sd_deg, 3), -2.5 * rot_sd_deg, 2.5 * rot_sd_deg)
    tr = np.clip(rng.normal(0.0, trans_sd_mm, 3), -2.5 * trans_sd_mm, 2.5 * trans_sd_mm)
    return rigid(rot, tr, centre)
