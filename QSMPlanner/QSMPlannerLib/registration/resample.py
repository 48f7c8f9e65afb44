"""One resampling of a volume onto a reference grid (RAS geometry; SimpleITK does the work in LPS)."""
from __future__ import annotations

import numpy as np

from ..volume import Volume
from .transform_io import sitk_affine_from_ras

_INTERP = {"linear": "sitkLinear", "nearest": "sitkNearestNeighbor", "bspline": "sitkBSpline"}


def resample(vol: Volume, reference: Volume, reference_from_vol=None, interpolation: str = "linear",
             default: float = 0.0, transform=None) -> Volume:
    """Resample ``vol`` onto ``reference``'s grid with ONE interpolation.

    reference_from_vol: 4x4 RAS (maps points of vol's space to the reference space); None = identity
    (both already in the same world space). ``transform``: alternatively a SimpleITK transform in the
    ITK resampling convention (reference LPS -> vol LPS), e.g. a nonlinear one.
    nearest keeps label values exactly; the output keeps vol's dtype for "nearest".
    """
    import SimpleITK as sitk
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {sorted(_INTERP)}")
    if transform is None:
        m = np.eye(4) if reference_from_vol is None else reference_from_vol
        transform = sitk_affine_from_ras(m)
    data = np.asarray(vol.data)
    if interpolation == "nearest":
        src = vol.to_sitk()
    else:
        src = vol.to_sitk(dtype=np.float32 if data.dtype != np.float64 else None)
    ref = Volume(np.zeros(reference.shape3, np.uint8), reference.ras_from_ijk).to_sitk()
    out = sitk.Resample(src, ref, transform, getattr(sitk, _INTERP[interpolation]), float(default),
                        src.GetPixelID())
    arr = sitk.GetArrayFromImage(out).transpose(2, 1, 0)
    return Volume(np.ascontiguousarray(arr), reference.ras_from_ijk.copy(), vol.name, dict(vol.meta))
