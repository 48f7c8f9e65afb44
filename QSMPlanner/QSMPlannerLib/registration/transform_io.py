"""ITK transform files (.h5/.tfm/.txt) that 3D Slicer loads with the right direction.

Convention: our matrices are RAS->RAS 4x4 named ``a_from_b``. An ITK transform file stores the
*resampling* transform (fixed-space points -> moving-space points) in LPS. Slicer reads a file as the
node's "FromParent" transform, so a moving image placed under the loaded node appears aligned to the
fixed image: the node's matrix-to-parent equals ``fixed_from_moving`` (RAS).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io.atomic import atomic_path
from ..volume import LPS_FROM_RAS

_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def _check_suffix(path: Path) -> None:
    name = path.name.lower()
    if not any(name.endswith(s) for s in _SUFFIXES):
        raise InputError(f"transform file must end with one of {', '.join(_SUFFIXES)}", path)


def lps_moving_from_fixed(fixed_from_moving_ras) -> np.ndarray:
    """The ITK (file) matrix: moving_from_fixed in LPS, from fixed_from_moving in RAS."""
    m = np.asarray(fixed_from_moving_ras, float).reshape(4, 4)
    return LPS_FROM_RAS @ np.linalg.inv(m) @ LPS_FROM_RAS


def fixed_from_moving_ras(lps_moving_from_fixed_4x4) -> np.ndarray:
    m = np.asarray(lps_moving_from_fixed_4x4, float).reshape(4, 4)
    return np.linalg.inv(LPS_FROM_RAS @ m @ LPS_FROM_RAS)


def sitk_affine_from_ras(fixed_from_moving) -> "object":
    """SimpleITK AffineTransform (fixed LPS -> moving LPS) for resampling the moving image."""
    import SimpleITK as sitk
    lps = lps_moving_from_fixed(fixed_from_moving)
    t = sitk.AffineTransform(3)
    t.SetMatrix(tuple(float(v) for v in lps[:3, :3].ravel()))
    t.SetTranslation(tuple(float(v) for v in lps[:3, 3]))
    return t


def write_transform(path, fixed_from_moving) -> Path:
    """Write a linear transform. ``fixed_from_moving``: 4x4 RAS mm (maps moving points to fixed).

    A ``SimpleITK.Transform`` (already in ITK resampling convention, LPS) is accepted as well, e.g. a
    composite with a displacement field for the atlas.
    """
    import SimpleITK as sitk
    path = Path(path)
    _check_suffix(path)
    if isinstance(fixed_from_moving, sitk.Transform):
        tx = fixed_from_moving
    else:
        tx = sitk_affine_from_ras(fixed_from_moving)
    suffix = "".join(path.suffixes[-1:])
    with atomic_path(path) as tmp:
        tmp = Path(tmp)
        # SimpleITK picks the writer from the suffix: keep it on the temporary name
        if not str(tmp).endswith(suffix):
            real_tmp = tmp.with_name(tmp.name + suffix)
            sitk.WriteTransform(tx, str(real_tmp))
            real_tmp.replace(tmp)
        else:
            sitk.WriteTransform(tx, str(tmp))
    return path


def read_sitk_transform(path):
    import SimpleITK as sitk
    path = Path(path)
    if not path.is_file():
        raise InputError("transform file not found", path)
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as e:
        raise InputError(f"cannot read ITK transform: {str(e).splitlines()[-1]}", path) from None


def _flatten(tx):
    import SimpleITK as sitk
    if tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        return [comp.GetNthTransform(i) for i in range(comp.GetNumberOfTransforms())]
    return [tx]


def read_transform(path) -> np.ndarray:
    """Read a linear ITK transform file -> ``fixed_from_moving`` 4x4 RAS (inverse of write)."""
    tx = read_sitk_transform(path)
    parts = _flatten(tx)
    # composite: ITK applies the last-added first; the product of the linear parts (moving_from_fixed)
    lps = np.eye(4)
    for t in parts:
        try:
            a = _linear_lps(t)
        except ValueError:
            raise InputError(f"transform '{t.GetName()}' is not linear; use read_sitk_transform",
                             path) from None
        lps = lps @ a
    return fixed_from_moving_ras(lps)


def _linear_lps(t) -> np.ndarray:
    """4x4 LPS matrix of a linear sitk transform (point -> A p + b)."""
    import SimpleITK as sitk
    name = t.GetName()
    if name in ("DisplacementFieldTransform", "BSplineTransform"):
        raise ValueError(name)
    # probe: exact for any affine-family transform
    p0 = np.array(t.TransformPoint((0.0, 0.0, 0.0)))
    a = np.column_stack([np.array(t.TransformPoint(tuple(float(x) for x in e))) - p0
                         for e in np.eye(3)])
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = p0
    _ = sitk
    return m
