"""Read and write single volumes (NIfTI via nibabel; NRRD/MHA/DICOM via SimpleITK), geometry in RAS.

NIfTI stores voxel-to-RAS directly (sform, else qform). NRRD/MHA/DICOM are LPS in ITK and are
converted at this boundary. Writers are atomic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".ima"):
        return True
    if _is_nifti(path) or path.name.lower().endswith(ITK_SUFFIXES):
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_volume(path, *, allow_4d: bool = False, require_finite: bool = True) -> Volume:
    """Read a 3-D (or, if ``allow_4d``, 4-D) image as a ``Volume`` in RAS.

    ``path`` may be a NIfTI, NRRD/MHA file, a directory holding one DICOM series, or one file of a
    DICOM series (the series in its directory is read).
    Raises ``InputError`` naming the file for unreadable, non-3-D or non-finite data.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        if path.is_dir():
            from .dicom_series import read_dicom_volume
            vol = read_dicom_volume(path)
        elif _is_dicom_file(path):   # one file of a series: read the series in its directory
            from .dicom_series import read_dicom_volume
            vol = read_dicom_volume(path.parent)
        elif _is_nifti(path):
            import nibabel as nib
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
            vol = Volume(np.asarray(data), img.affine, path.name)
        elif path.name.lower().endswith(ITK_SUFFIXES):
            import SimpleITK as sitk
            vol = Volume.from_sitk(sitk.ReadImage(str(path)), path.name)
        else:
            raise InputError("unknown image format (expected .nii, .nii.gz, .nrrd, .mha or a "
                             "DICOM directory)", path)
    except InputError:
        raise
    except Exception as exc:  # unreadable files get a message naming them
        raise InputError(f"cannot read image ({exc.__class__.__name__}: {exc})", path) from exc
    data = vol.data
    while data.ndim > 3 and data.shape[-1] == 1 and not (allow_4d and data.ndim == 4):
        data = data[..., 0]
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI t-dim 1 with vector components
        data = data[:, :, :, 0, :]
    if data.ndim < 3 or (data.ndim > 3 and not allow_4d) or data.ndim > 4:
        want = "3-D or 4-D" if allow_4d else "3-D"
        raise InputError(f"expected a {want} image, got shape {tuple(data.shape)}", path)
    axes = np.asarray(vol.ras_from_ijk, float)[:3, :3]
    sizes = np.linalg.norm(axes, axis=0) if np.isfinite(axes).all() else np.zeros(3)
    if sizes.min() < 1e-3 or abs(np.linalg.det(axes)) < 1e-9 * np.prod(np.maximum(sizes, 1e-3)):
        raise InputError(f"the header's voxel-to-world matrix is singular (voxel sizes "
                         f"{np.round(sizes, 4).tolist()} mm): the image has no valid geometry", path)
    if require_finite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise InputError(f"{n} voxels are NaN or Inf", path)
    vol.data = data
    vol.meta["path"] = str(path)
    return vol


def write_volume(vol: Volume, path, dtype=None) -> Path:
    """Write ``vol`` to NIfTI (.nii/.nii.gz) or NRRD/MHA, atomically. Returns the path."""
    path = Path(path)
    data = np.asarray(vol.data if dtype is None else vol.data.astype(dtype))
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    with atomic_path(path) as tmp:
        if _is_nifti(path):
            import nibabel as nib
            img = nib.Nifti1Image(data, vol.ras_from_ijk)
            img.set_qform(vol.ras_from_ijk, code=1)
            img.set_sform(vol.ras_from_ijk, code=1)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, str(tmp))
        elif path.name.lower().endswith(ITK_SUFFIXES):
            import SimpleITK as sitk
            sitk.WriteImage(vol.with_data(data).to_sitk(), str(tmp), True)
        else:
            raise InputError("unknown output format (use .nii.gz, .nii, .nrrd or .mha)", path)
    return path
