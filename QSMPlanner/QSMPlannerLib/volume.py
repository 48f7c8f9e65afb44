"""``Volume``: a voxel array with its voxel-to-RAS geometry — the one image type inside QSMPlanner.

``data`` is indexed [i, j, k(, ...)] (NIfTI order). ``ras_from_ijk`` maps (i, j, k, 1) to RAS mm.
ITK/SimpleITK images are LPS with arrays indexed [k, j, i]: ``to_sitk``/``from_sitk`` convert.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def apply(m, points) -> np.ndarray:
    """Points (..., 3) mapped by the 4x4 affine ``m`` (e.g. ``apply(t1_from_gre, p_gre)``)."""
    m = np.asarray(m, float)
    return np.asarray(points, float) @ m[:3, :3].T + m[:3, 3]


@dataclass
class Volume:
    data: np.ndarray
    ras_from_ijk: np.ndarray
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ras_from_ijk = np.asarray(self.ras_from_ijk, dtype=np.float64).reshape(4, 4)

    # geometry ---------------------------------------------------------------------------------
    @property
    def shape3(self) -> tuple:
        return tuple(self.data.shape[:3])

    @property
    def voxel_mm(self) -> np.ndarray:
        return np.linalg.norm(self.ras_from_ijk[:3, :3], axis=0)

    @property
    def direction_ras(self) -> np.ndarray:
        """3x3 with unit columns: the RAS direction of the i, j, k axes."""
        return self.ras_from_ijk[:3, :3] / self.voxel_mm

    @property
    def origin_ras(self) -> np.ndarray:
        return self.ras_from_ijk[:3, 3].copy()

    @property
    def ijk_from_ras(self) -> np.ndarray:
        return np.linalg.inv(self.ras_from_ijk)

    @property
    def lps_from_ijk(self) -> np.ndarray:
        return LPS_FROM_RAS @ self.ras_from_ijk

    @property
    def center_ras(self) -> np.ndarray:
        c = (np.array(self.shape3, float) - 1.0) / 2.0
        return self.ijk_to_ras(c)

    def ijk_to_ras(self, ijk) -> np.ndarray:
        ijk = np.asarray(ijk, float)
        return ijk @ self.ras_from_ijk[:3, :3].T + self.ras_from_ijk[:3, 3]

    def ras_to_ijk(self, ras) -> np.ndarray:
        ras = np.asarray(ras, float)
        inv = self.ijk_from_ras
        return ras @ inv[:3, :3].T + inv[:3, 3]

    def voxel_ras_grid(self) -> np.ndarray:
        """RAS coordinates of every voxel centre, shape (I, J, K, 3)."""
        idx = np.indices(self.shape3, dtype=np.float64)
        return np.moveaxis(np.tensordot(self.ras_from_ijk[:3, :3], idx, axes=(1, 0)), 0, -1) \
            + self.ras_from_ijk[:3, 3]

    def with_data(self, data: np.ndarray, name: str | None = None) -> "Volume":
        return Volume(np.asarray(data), self.ras_from_ijk.copy(),
                      self.name if name is None else name, dict(self.meta))

    def same_geometry(self, other: "Volume", tol_mm: float = 1e-3) -> bool:
        return self.shape3 == other.shape3 and np.allclose(self.ras_from_ijk, other.ras_from_ijk,
                                                           atol=tol_mm)

    # SimpleITK ---------------------------------------------------------------------------------
    def to_sitk(self, dtype=None):
        """3-D (or vector, if 4-D) SimpleITK image in LPS with the same geometry."""
        import SimpleITK as sitk
        arr = np.asarray(self.data if dtype is None else self.data.astype(dtype))
        if arr.ndim == 3:
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        elif arr.ndim == 4:
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0, 3)),
                                         isVector=True)
        else:
            raise ValueError(f"Volume.to_sitk: expected 3-D or 4-D data, got {arr.ndim}-D")
        lps = self.lps_from_ijk
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        img.SetSpacing(tuple(float(s) for s in spacing))
        img.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
        img.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
        return img

    @staticmethod
    def from_sitk(img, name: str = "") -> "Volume":
        import SimpleITK as sitk
        arr = sitk.GetArrayFromImage(img)
        arr = arr.transpose(2, 1, 0, 3) if img.GetNumberOfComponentsPerPixel() > 1 \
            else arr.transpose(2, 1, 0)
        d = np.array(img.GetDirection(), float).reshape(3, 3)
        lps = np.eye(4)
        lps[:3, :3] = d * np.array(img.GetSpacing(), float)
        lps[:3, 3] = img.GetOrigin()
        return Volume(np.ascontiguousarray(arr), LPS_FROM_RAS @ lps, name)


def mask_box(mask: np.ndarray, margin: int = 0) -> tuple:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array)."""
    mask = np.asarray(mask)
    out = []
    for a, n in enumerate(mask.shape):  # per-axis projections: no index arrays of the whole mask
        hit = np.flatnonzero(mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)))
        if not hit.size:
            return tuple(slice(0, k) for k in mask.shape)
        out.append(slice(max(0, int(hit[0]) - margin), min(n, int(hit[-1]) + 1 + margin)))
    return tuple(out)


def ras_from_ijk_matrix(voxel_mm, direction=None, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Build a voxel-to-RAS matrix from spacing, a 3x3 direction (unit columns) and origin."""
    m = np.eye(4)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    m[:3, :3] = direction * np.asarray(voxel_mm, float)
    m[:3, 3] = origin
    return m


def rotation_matrix(angles_deg) -> np.ndarray:
    """3x3 rotation: about R (x), then A (y), then S (z) axes, degrees (R = Rz @ Ry @ Rx)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, float))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx
