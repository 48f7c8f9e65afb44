"""``MultiEchoGRE``: the multi-echo gradient-echo acquisition handed to the QSM stage.

Loaders (BIDS, NIfTI + TE list, 4-D NIfTI, DICOM) live beside this module and all return this type,
with the phase already scaled to radians in [-pi, pi) and the GE sign handled.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..volume import Volume

GAMMA_HZ_PER_T = 42.577478518e6  # proton gyromagnetic ratio / 2pi


@dataclass
class MultiEchoGRE:
    magnitude: np.ndarray        # (I, J, K, E) float32, arbitrary units
    phase_rad: np.ndarray        # (I, J, K, E) float32, radians in [-pi, pi)
    te_s: np.ndarray             # (E,) echo times in seconds, strictly increasing
    b0_tesla: float              # field strength
    ras_from_ijk: np.ndarray     # 4x4 voxel -> RAS mm (shared by all echoes)
    b0_dir_ijk: np.ndarray       # unit B0 direction in the voxel (array) frame
    phase_scaling: str = ""      # how the phase was scaled to radians (reported to the user)
    source: str = ""             # where it came from (file or directory)
    warnings: list = field(default_factory=list)

    @property
    def n_echoes(self) -> int:
        return int(self.magnitude.shape[3])

    @property
    def shape3(self) -> tuple:
        return tuple(self.magnitude.shape[:3])

    @property
    def voxel_mm(self) -> np.ndarray:
        return np.linalg.norm(self.ras_from_ijk[:3, :3], axis=0)

    def echo_volume(self, e: int = 0, part: str = "magnitude") -> Volume:
        arr = self.magnitude if part == "magnitude" else self.phase_rad
        return Volume(arr[..., e], self.ras_from_ijk.copy(), f"{part}_echo{e + 1}")

    def rss_magnitude(self) -> Volume:
        """Root-sum-of-squares magnitude over echoes (for masking and registration)."""
        return Volume(np.sqrt((self.magnitude.astype(np.float32) ** 2).sum(axis=3)),
                      self.ras_from_ijk.copy(), "magnitude_rss")


def b0_dir_from_geometry(ras_from_ijk: np.ndarray, b0_dir_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit B0 direction expressed in the voxel (i, j, k) frame.

    B0 is parallel to the scanner z axis, which is the RAS S axis for head-first supine patients
    (``b0_dir_world``). Its components along the voxel axes are the projections onto the unit
    direction columns of ``ras_from_ijk`` (voxel axes are orthonormal in direction, so the
    transpose is the inverse).
    """
    d = np.asarray(ras_from_ijk, float)[:3, :3]
    d = d / np.linalg.norm(d, axis=0)
    v = d.T @ np.asarray(b0_dir_world, float)
    return v / np.linalg.norm(v)


@dataclass
class EchoVolumes:
    """A multi-echo GRE as separate 3-D echo arrays (e.g. read-only views of Slicer volume nodes): cheap to
    hand over, stacked into a ``MultiEchoGRE`` by ``as_multi_echo`` where a stage needs it."""
    magnitudes: list
    phases: list
    te_s: np.ndarray
    b0_tesla: float
    ras_from_ijk: np.ndarray
    b0_dir_ijk: np.ndarray
    phase_scaling: str = ""
    source: str = ""

    def stacked(self) -> MultiEchoGRE:
        return MultiEchoGRE(magnitude=np.stack(self.magnitudes, axis=3).astype(np.float32, copy=False),
                            phase_rad=np.stack(self.phases, axis=3).astype(np.float32, copy=False),
                            te_s=np.asarray(self.te_s, float), b0_tesla=float(self.b0_tesla),
                            ras_from_ijk=np.asarray(self.ras_from_ijk, float).copy(),
                            b0_dir_ijk=np.asarray(self.b0_dir_ijk, float), phase_scaling=self.phase_scaling,
                            source=self.source)


def as_multi_echo(gre) -> MultiEchoGRE:
    """``gre`` as a ``MultiEchoGRE`` (``EchoVolumes`` are stacked)."""
    return gre.stacked() if isinstance(gre, EchoVolumes) else gre
