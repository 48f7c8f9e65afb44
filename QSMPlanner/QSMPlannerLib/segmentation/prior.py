"""The CIT168 atlas prior on the QSM grid: atlas labels pulled through T1 -> MNI (and QSM -> T1)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..volume import LPS_FROM_RAS, Volume


def _flatten(tx):
    import SimpleITK as sitk
    if tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        return [comp.GetNthTransform(i) for i in range(comp.GetNumberOfTransforms())]
    return [tx]


def atlas_labels() -> Volume:
    from ..registration.atlas import cit168_labels
    return cit168_labels()


def _reference_to_atlas(t1_to_mni, t1_from_reference=None):
    """One SimpleITK transform, reference LPS points -> atlas (MNI) LPS points."""
    import SimpleITK as sitk
    from ..registration.transform_io import sitk_affine_from_ras
    comp = sitk.CompositeTransform(3)
    for t in _flatten(t1_to_mni):
        comp.AddTransform(t)
    if t1_from_reference is not None:
        # resampling transform reference LPS -> T1 LPS, applied first (added last)
        comp.AddTransform(sitk_affine_from_ras(np.linalg.inv(np.asarray(t1_from_reference, float))))
    return comp


def _nearest_labels(atlas: Volume, reference: Volume, transform, name: str = "CIT168 prior") -> Volume:
    from ..registration import resample
    out = resample(atlas, reference, interpolation="nearest", transform=transform)
    return Volume(np.asarray(out.data), reference.ras_from_ijk.copy(), name)


def prior_on_grid(reference: Volume, t1_to_mni, t1_from_reference=None) -> Volume:
    """CIT168 labels (nearest label) on ``reference``'s grid.

    t1_to_mni: SimpleITK transform in ITK resampling convention (T1 LPS points -> MNI LPS points),
    e.g. ``AtlasNormalization.transform`` or a file written by ``qsmplanner normalize``.
    t1_from_reference: 4x4 RAS mapping the reference (QSM) space into T1 space; None = same space.
    """
    return _nearest_labels(atlas_labels(), reference, _reference_to_atlas(t1_to_mni, t1_from_reference))


@dataclass
class AtlasPrior:
    """The prior as the atlas itself plus where each reference voxel lands in it, so that corrections
    found on the QSM are composed with the registration and the atlas is sampled once (a label map
    resampled twice loses ~half a voxel of its boundary).

    labels: nearest CIT168 label on the reference (QSM) grid, as ``prior_on_grid``.
    atlas: CIT168 labels (MNI), cropped around the nuclei. transform: reference LPS -> atlas LPS."""
    labels: Volume
    atlas: Volume
    transform: object

    @property
    def name(self) -> str:
        return self.labels.name

    def on_grid(self, reference: Volume) -> "AtlasPrior":
        """The same prior for another grid in the same space (e.g. the QSM resampled)."""
        return AtlasPrior(_nearest_labels(self.atlas, reference, self.transform, self.labels.name),
                          self.atlas, self.transform)

    def atlas_index(self, lo, shape) -> np.ndarray:
        """(3, *shape) float32: atlas voxel coordinates of the reference voxels ``lo + (i, j, k)``."""
        import SimpleITK as sitk
        ras_from_ijk = self.labels.ras_from_ijk.copy()
        ras_from_ijk[:3, 3] = self.labels.ijk_to_ras(np.asarray(lo, float))
        ref = Volume(np.zeros(tuple(int(n) for n in shape), np.uint8), ras_from_ijk).to_sitk()
        f = sitk.TransformToDisplacementFieldFilter()
        f.SetReferenceImage(ref)
        f.SetOutputPixelType(sitk.sitkVectorFloat64)
        disp = sitk.GetArrayFromImage(f.Execute(self.transform)).transpose(2, 1, 0, 3)  # LPS mm
        idx = np.indices(tuple(int(n) for n in shape), dtype=np.float64)
        lps_from_ijk = LPS_FROM_RAS @ ras_from_ijk
        lps = np.tensordot(lps_from_ijk[:3, :3], idx, axes=(1, 0)) + lps_from_ijk[:3, 3, None, None, None]
        lps += np.moveaxis(disp, -1, 0)
        atlas_from_lps = self.atlas.ijk_from_ras @ LPS_FROM_RAS
        out = np.tensordot(atlas_from_lps[:3, :3], lps, axes=(1, 0)) + atlas_from_lps[:3, 3, None, None, None]
        return out.astype(np.float32)


def atlas_prior(reference: Volume, t1_to_mni, t1_from_reference=None, values=None) -> AtlasPrior:
    """``prior_on_grid`` kept with the atlas and the transform (see ``AtlasPrior``). ``values``: CIT168
    values to keep the atlas crop around (default: those of STN, SN and RN)."""
    from . import structures as S
    atlas = atlas_labels()
    transform = _reference_to_atlas(t1_to_mni, t1_from_reference)
    labels = _nearest_labels(atlas, reference, transform)
    keep = sorted({v for vs in S.CIT168_VALUES.values() for v in vs}) if values is None else list(values)
    where = np.argwhere(np.isin(np.asarray(atlas.data), keep))
    if len(where):
        lo = np.maximum(where.min(axis=0) - 8, 0)
        hi = np.minimum(where.max(axis=0) + 9, atlas.shape3)
        ras_from_ijk = atlas.ras_from_ijk.copy()
        ras_from_ijk[:3, 3] = atlas.ijk_to_ras(lo.astype(float))
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        atlas = Volume(np.ascontiguousarray(np.asarray(atlas.data)[crop]), ras_from_ijk, atlas.name)
    return AtlasPrior(labels, atlas, transform)
