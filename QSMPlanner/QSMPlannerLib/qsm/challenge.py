"""The 2016 QSM reconstruction challenge's in-vivo evaluation (Langkammer et al., MRM 2018;79:1661).

Data layout (as distributed: .mat or NIfTI, any of the two per file): ``phs_tissue`` (local field,
ppm), ``msk`` (brain mask), ``chi_33`` (STI chi33 reference, ppm), ``chi_cosmos`` (COSMOS reference,
ppm), optional ``evaluation_mask`` (region labels) and ``magn``. 1.06 x 1.06 x 1.07 mm, B0 along k.
Metric: RMSE = 100 * ||chi - ref|| / ||ref|| over the mask, no demeaning (the challenge script).
Deep grey matter: region means, each map referenced to its mean in the brain mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

CHALLENGE_VOXEL_MM = (1.0625, 1.0625, 1.0714286)   # the challenge's spatial_res
TKD_CHALLENGE_THRESHOLD = 0.19                     # the challenge's own TKD baseline
FILES = ("phs_tissue", "msk", "chi_33", "chi_cosmos", "evaluation_mask", "magn")


@dataclass
class ChallengeData:
    local_field_ppm: np.ndarray
    mask: np.ndarray
    chi_33: np.ndarray
    chi_cosmos: np.ndarray
    labels: np.ndarray | None
    magnitude: np.ndarray | None
    voxel_mm: np.ndarray
    ras_from_ijk: np.ndarray


def _load_one(directory: Path, stem: str, required: bool):
    for ext in (".nii.gz", ".nii"):
        p = directory / f"{stem}{ext}"
        if p.exists():
            import nibabel as nib
            img = nib.load(str(p))
            return np.asarray(img.dataobj, np.float64), img.affine
    p = directory / f"{stem}.mat"
    if p.exists():
        from scipy.io import loadmat
        try:
            mat = loadmat(str(p))
        except NotImplementedError as exc:   # MATLAB v7.3 (HDF5)
            raise InputError("MATLAB v7.3 file: save it as -v7 or NIfTI", p) from exc
        arrays = {k: v for k, v in mat.items() if not k.startswith("__") and isinstance(v, np.ndarray)
                  and v.ndim == 3}
        if not arrays:
            raise InputError("no 3-D array in this .mat file", p)
        value = arrays.get(stem, next(iter(arrays.values())))
        return np.asarray(value, np.float64), None
    if required:
        raise InputError(f"{stem}.mat / .nii / .nii.gz not found", directory)
    return None, None


def read_challenge(directory, voxel_mm=None) -> ChallengeData:
    """The challenge files of ``directory``; ``voxel_mm`` overrides the NIfTI header (needed for .mat
    input, default the challenge's 1.0625 x 1.0625 x 1.0714 mm)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("challenge data directory not found", directory)
    loaded = {s: _load_one(directory, s, s in FILES[:4]) for s in FILES}
    shape = loaded["phs_tissue"][0].shape
    for s, (a, _) in loaded.items():
        if a is not None and a.shape != shape:
            raise InputError(f"{s} has shape {a.shape}, phs_tissue {shape}", directory)
    affine = loaded["phs_tissue"][1]
    if voxel_mm is not None:
        vox = np.asarray(voxel_mm, float)
        affine = np.diag(list(vox) + [1.0])
    elif affine is not None:
        vox = np.linalg.norm(affine[:3, :3], axis=0)
    else:
        vox = np.asarray(CHALLENGE_VOXEL_MM)
        affine = np.diag(list(vox) + [1.0])
    mask = loaded["msk"][0] > 0
    if not mask.any():
        raise InputError("msk has no voxels", directory)
    labels = loaded["evaluation_mask"][0]
    return ChallengeData(loaded["phs_tissue"][0].astype(np.float32), mask,
                         loaded["chi_33"][0].astype(np.float32), loaded["chi_cosmos"][0].astype(np.float32),
                         None if labels is None else np.rint(labels).astype(np.int32),
                         loaded["magn"][0], vox, affine)


def challenge_rmse(chi, ref, mask) -> float:
    """100 * ||chi - ref|| / ||ref|| over ``mask`` (no demeaning), as the challenge scored."""
    m = np.asarray(mask, bool)
    ref_m = np.asarray(ref, np.float64)[m]
    return float(100.0 * np.linalg.norm(np.asarray(chi, np.float64)[m] - ref_m) / np.linalg.norm(ref_m))


def region_means(chi, mask, labels, regions: dict) -> dict:
    """Mean chi per region (``name -> label values``), chi referenced to its mean in ``mask``."""
    m = np.asarray(mask, bool)
    c = np.asarray(chi, np.float64)
    ref = c[m].mean()
    out = {}
    for name, values in regions.items():
        sel = np.isin(labels, list(values)) & m
        out[name] = float(c[sel].mean() - ref) if sel.any() else float("nan")
    return out


def parse_regions(text: str) -> dict:
    """'GP=2,SN=6,RN=4' or 'GP=5+6,SN=7' -> {'GP': (5, 6), ...}."""
    out = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        name, _, vals = item.partition("=")
        try:
            out[name.strip()] = tuple(int(v) for v in vals.split("+"))
        except ValueError as exc:
            raise InputError(f"bad region {item!r}: write NAME=label[+label...]") from exc
        if not name.strip() or not out[name.strip()]:
            raise InputError(f"bad region {item!r}: write NAME=label[+label...]")
    return out
