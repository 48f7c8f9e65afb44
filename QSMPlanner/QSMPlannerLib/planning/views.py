"""Probe's-eye and in-line views of a trajectory as resampled images (with label map and path overlays).

A ``Reslice`` is a 2-D image whose pixel (col, row) sits at world RAS
``center_ras + (col - (W-1)/2) * spacing * u_ras - (row - (H-1)/2) * spacing * v_ras`` (row 0 at the top,
``v_ras`` points up in the picture). Probe's-eye: the plane perpendicular to the path at a depth (mm above
the target); u = patient's right projected on the plane (for a left-right reading), v = anterior-ish.
In-line: two planes containing the path (one with the medial-lateral axis, one with the anterior-posterior
axis); v runs along the path towards the entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Volume


@dataclass
class Reslice:
    name: str
    image: np.ndarray                 # (H, W) float32
    labels: np.ndarray | None         # (H, W) int (nearest) or None
    center_ras: np.ndarray
    u_ras: np.ndarray
    v_ras: np.ndarray
    spacing_mm: float
    path_px: np.ndarray               # (2, 2): (col, row) of the target and the entry projected on the plane
    description: str = ""

    @property
    def ras_from_pixel(self) -> np.ndarray:
        """4x4 mapping (col, row, 0, 1) to world RAS mm."""
        h, w = self.image.shape
        m = np.eye(4)
        m[:3, 0] = self.spacing_mm * self.u_ras
        m[:3, 1] = -self.spacing_mm * self.v_ras
        m[:3, 2] = np.cross(self.u_ras, self.v_ras)
        m[:3, 3] = self.center_ras - (w - 1) / 2 * m[:3, 0] - (h - 1) / 2 * m[:3, 1]
        return m

    def pixel_of(self, ras) -> np.ndarray:
        """(col, row) of world RAS points (N, 3) projected on the plane."""
        m = np.linalg.inv(self.ras_from_pixel)
        p = np.asarray(ras, float).reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
        return p[:, :2]

    def as_volume(self) -> Volume:
        """The image as a one-slice Volume (i = col, j = row) with its RAS geometry."""
        return Volume(self.image.T[:, :, None].copy(), self.ras_from_pixel, self.name)


def _sample(vol: Volume, world_from_volume, pts, order):
    m = np.linalg.inv((np.eye(4) if world_from_volume is None else np.asarray(world_from_volume, float))
                      @ vol.ras_from_ijk)
    ijk = pts.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]
    data = np.asarray(vol.data)
    if order == 0:
        idx = np.rint(ijk).astype(int)
        ok = np.all((idx >= 0) & (idx < np.array(data.shape[:3])), axis=1)
        out = np.zeros(len(idx), data.dtype)
        out[ok] = data[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out.reshape(pts.shape[:-1])
    return ndimage.map_coordinates(np.asarray(data, np.float32), ijk.T, order=1, mode="constant",
                                   cval=0.0, prefilter=False).reshape(pts.shape[:-1])


def reslice(volume: Volume, center_ras, u_ras, v_ras, width_px: int, height_px: int, spacing_mm: float,
            world_from_volume=None, labels: Volume | None = None, world_from_labels=None,
            name: str = "reslice", path=None, description: str = "") -> Reslice:
    """Resample ``volume`` (trilinear) and ``labels`` (nearest) on the plane through ``center_ras`` spanned
    by unit vectors ``u_ras`` (to the right) and ``v_ras`` (up)."""
    if np.asarray(volume.data).ndim != 3:
        raise InputError("reslice needs a 3-D volume")
    c = np.asarray(center_ras, float)
    u = np.asarray(u_ras, float) / np.linalg.norm(u_ras)
    v = np.asarray(v_ras, float) / np.linalg.norm(v_ras)
    cols = (np.arange(width_px) - (width_px - 1) / 2) * spacing_mm
    rows = (np.arange(height_px) - (height_px - 1) / 2) * spacing_mm
    pts = c[None, None, :] + cols[None, :, None] * u[None, None, :] - rows[:, None, None] * v[None, None, :]
    img = _sample(volume, world_from_volume, pts, 1).astype(np.float32)
    lab = _sample(labels, world_from_labels, pts, 0) if labels is not None else None
    res = Reslice(name, img, lab, c, u, v, float(spacing_mm), np.zeros((2, 2)), description)
    if path is not None:
        res.path_px = res.pixel_of(np.asarray(path, float))
    return res


def _path_axes(target, entry):
    t, e = np.asarray(target, float), np.asarray(entry, float)
    n = (e - t) / np.linalg.norm(e - t)
    lat = np.array([1.0, 0.0, 0.0]) - n[0] * n
    if np.linalg.norm(lat) < 1e-6:
        lat = np.array([0.0, 1.0, 0.0]) - n[1] * n
    lat /= np.linalg.norm(lat)
    ant = np.cross(n, lat)
    if ant[1] < 0:
        ant = -ant
    return t, e, n, lat, ant


def probe_eye_view(volume: Volume, target_ras, entry_ras, depth_mm: float = 0.0, fov_mm: float = 40.0,
                   spacing_mm: float = 0.5, world_from_volume=None, labels: Volume | None = None,
                   world_from_labels=None) -> Reslice:
    """The slice perpendicular to the path ``depth_mm`` above the target (negative: below), centred on
    the path, ``fov_mm`` wide; the path crosses it at the image centre."""
    t, e, n, lat, ant = _path_axes(target_ras, entry_ras)
    npx = int(round(fov_mm / spacing_mm)) + 1
    return reslice(volume, t + depth_mm * n, lat, ant, npx, npx, spacing_mm, world_from_volume, labels,
                   world_from_labels, name=f"probe's-eye {depth_mm:+.1f} mm", path=np.stack([t, e]),
                   description=f"perpendicular to the path, {depth_mm:+.1f} mm above the target; "
                               f"right = patient's right (projected), up = anterior (projected)")


def inline_views(volume: Volume, target_ras, entry_ras, fov_mm: float = 60.0, below_mm: float = 10.0,
                 spacing_mm: float = 0.5, world_from_volume=None, labels: Volume | None = None,
                 world_from_labels=None) -> tuple[Reslice, Reslice]:
    """Two planes containing the path, from ``below_mm`` under the target to the entry: (medial-lateral
    plane ~ coronal-oblique, anterior-posterior plane ~ sagittal-oblique); up = towards the entry."""
    t, e, n, lat, ant = _path_axes(target_ras, entry_ras)
    length = float(np.linalg.norm(e - t))
    h = int(round((length + below_mm + 5.0) / spacing_mm)) + 1
    w = int(round(fov_mm / spacing_mm)) + 1
    center = t + n * ((length + 5.0) - below_mm) / 2.0
    path = np.stack([t, e])
    a = reslice(volume, center, lat, n, w, h, spacing_mm, world_from_volume, labels, world_from_labels,
                name="in-line (medial-lateral)", path=path,
                description="plane containing the path and the patient's left-right axis; up = to the entry")
    b = reslice(volume, center, ant, n, w, h, spacing_mm, world_from_volume, labels, world_from_labels,
                name="in-line (anterior-posterior)", path=path,
                description="plane containing the path and the anterior-posterior axis; up = to the entry")
    return a, b
