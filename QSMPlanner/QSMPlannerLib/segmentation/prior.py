"""The CIT168 atlas prior on the QSM grid: atlas labels pulled through T1 -> MNI (and QSM -> T1)."""
from __future__ import annotations

import numpy as np

from ..volume import Volume


def _flatten(tx):
    import SimpleITK as sitk
    if tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        return [comp.GetNthTransform(i) for i in range(comp.GetNumberOfTransforms())]
    return [tx]


def atlas_labels() -> Volume:
    from .. import ATLAS_DIR
    from ..io.volumes import read_volume
    from ..registration.atlas import LABELS
    labels = read_volume(ATLAS_DIR / LABELS)
    return labels.with_data(np.rint(labels.data).astype(np.int16), name="CIT168")


def prior_on_grid(reference: Volume, t1_to_mni, t1_from_reference=None) -> Volume:
    """CIT168 labels (nearest label) on ``reference``'s grid.

    t1_to_mni: SimpleITK transform in ITK resampling convention (T1 LPS points -> MNI LPS points),
    e.g. ``AtlasNormalization.transform`` or a file written by ``qsmplanner normalize``.
    t1_from_reference: 4x4 RAS mapping the reference (QSM) space into T1 space; None = same space.
    """
    import SimpleITK as sitk
    from ..registration import resample
    from ..registration.transform_io import sitk_affine_from_ras
    comp = sitk.CompositeTransform(3)
    for t in _flatten(t1_to_mni):
        comp.AddTransform(t)
    if t1_from_reference is not None:
        # resampling transform reference LPS -> T1 LPS, applied first (added last)
        comp.AddTransform(sitk_affine_from_ras(np.linalg.inv(np.asarray(t1_from_reference, float))))
    out = resample(atlas_labels(), reference, interpolation="nearest", transform=comp)
    return Volume(np.asarray(out.data), reference.ras_from_ijk.copy(), "CIT168 prior")
