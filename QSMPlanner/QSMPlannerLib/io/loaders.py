"""``load_gre``: read a multi-echo GRE from BIDS, NIfTI files + TEs, a 4-D NIfTI + TEs, or DICOM.

Returns a ``MultiEchoGRE`` in the project's convention: arrays indexed [i, j, k, echo], geometry
``ras_from_ijk`` (RAS mm), phase in radians [-pi, pi) (GE sign flipped), TEs in seconds, B0 in tesla,
``b0_dir_ijk`` the unit B0 direction in the voxel frame. Every problem with the input raises
``InputError`` naming the file; inputs are only read.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume
from . import bids as bids_mod
from .gre import MultiEchoGRE, b0_dir_from_geometry
from .phase import detect_phase_scaling, to_float32_wrapped
from .volumes import read_volume

DEFAULT_B0_T = 3.0
GEOMETRY_TOL_MM = 1e-3


def _as_paths(x) -> list[Path]:
    if x is None:
        return []
    if isinstance(x, (str, Path)):
        return [Path(x)]
    return [Path(p) for p in x]


def _is_dicom_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    from .dicom_series import has_dicom
    return has_dicom(path)


def _split_echoes(paths: list[Path], part: str) -> tuple[list[Volume], list[Path]]:
    """Volumes (3-D, one per echo) from several 3-D files or one 4-D file; the file of each echo."""
    if not paths:
        raise InputError(f"no {part} files given")
    if len(paths) == 1:
        vol = read_volume(paths[0], allow_4d=True)
        if vol.data.ndim == 4:
            return [vol.with_data(vol.data[..., e], f"{part}_echo{e + 1}")
                    for e in range(vol.data.shape[3])], [paths[0]] * vol.data.shape[3]
        return [vol], [paths[0]]
    vols = []
    for p in paths:
        v = read_volume(p, allow_4d=True)
        if v.data.ndim != 3:
            raise InputError(f"expected a 3-D image per echo when several {part} files are given, "
                             f"got shape {tuple(v.data.shape)}", p)
        vols.append(v)
    return vols, list(paths)


def _check_geometry(vols: list[Volume], files: list[Path]) -> None:
    ref, ref_file = vols[0], files[0]
    for v, f in zip(vols[1:], files[1:]):
        if v.shape3 != ref.shape3:
            raise InputError(f"shape {v.shape3} differs from {ref.shape3} of {Path(ref_file).name}", f)
        if not np.allclose(v.ras_from_ijk, ref.ras_from_ijk, atol=GEOMETRY_TOL_MM):
            dmax = float(np.abs(v.ras_from_ijk - ref.ras_from_ijk).max())
            raise InputError(f"geometry (voxel-to-RAS matrix) differs from {Path(ref_file).name} "
                             f"by up to {dmax:.4g} mm", f)


def _check_te(te, n_echoes: int, where) -> np.ndarray:
    if te is None or len(te) == 0:
        raise InputError("echo times are missing: give --te (seconds) or JSON sidecars with EchoTime",
                         where)
    te = np.asarray([float(t) for t in te], dtype=float)
    if te.size != n_echoes:
        raise InputError(f"{te.size} echo times given for {n_echoes} echoes", where)
    if not np.isfinite(te).all() or (te <= 0).any():
        raise InputError(f"echo times must be positive numbers (got {te.tolist()})", where)
    if (te > 1.0).any():
        raise InputError(f"echo times must be in seconds (got {te.tolist()}; milliseconds?)", where)
    if te.size > 1 and (np.diff(te) <= 0).any():
        raise InputError(f"echo times are not strictly increasing: {te.tolist()}", where)
    return te


def _check_magnitude(mag: np.ndarray, files: list[Path]) -> None:
    for e in range(mag.shape[3]):
        m = mag[..., e]
        if not np.any(m):
            raise InputError("the magnitude is zero everywhere (empty image)", files[e])
        if np.mean(m < 0) > 0.01:
            raise InputError(f"{100 * np.mean(m < 0):.0f}% of magnitude voxels are negative: is this a "
                             "phase image?", files[e])


def _b0_direction(b0_dir, sidecar_dir, ras_from_ijk, where) -> tuple[np.ndarray, str]:
    if b0_dir is not None:
        v, how = np.asarray(b0_dir, float).reshape(-1), "given"
    elif sidecar_dir is not None:
        v, how = np.asarray(sidecar_dir, float).reshape(-1), "sidecar B0DirectionIJK"
    else:
        return b0_dir_from_geometry(ras_from_ijk), "image direction matrix"
    if v.shape != (3,) or not np.isfinite(v).all() or np.linalg.norm(v) < 1e-6:
        raise InputError(f"B0 direction must be three numbers, not all zero (got {v.tolist()})", where)
    return v / np.linalg.norm(v), how


def assemble_gre(mag_vols, phase_vols, mag_files, phase_files, te, b0, b0_dir=None, *,
                 sidecar_b0_dir=None, ge_phase=False, phase_units=None, source="",
                 warnings=None) -> MultiEchoGRE:
    """Check and combine per-echo magnitude/phase ``Volume``s into a ``MultiEchoGRE``."""
    warnings = list(warnings or [])
    if len(mag_vols) != len(phase_vols):
        raise InputError(f"{len(mag_vols)} magnitude echoes but {len(phase_vols)} phase echoes",
                         phase_files[0] if phase_files else source)
    _check_geometry(list(mag_vols) + list(phase_vols), list(mag_files) + list(phase_files))
    n = len(mag_vols)
    te = _check_te(te, n, phase_files[0] if len(set(map(str, phase_files))) == 1 else source)
    if n == 1:
        warnings.append("single echo: the field comes from one echo (no multi-echo fit); "
                        "expect more noise and no phase-offset correction")
    ref = mag_vols[0]
    scaling = detect_phase_scaling([v.data for v in phase_vols],
                                   phase_files[0] if len(set(map(str, phase_files))) == 1 else
                                   ", ".join(sorted({Path(p).name for p in phase_files})),
                                   units=phase_units)
    phase = np.stack([scaling.apply(v.data) for v in phase_vols], axis=3)
    how = scaling.describe()
    if ge_phase:
        np.negative(phase, out=phase)   # (-pi, pi]: pi becomes -pi below
        how += "; GE phase sign flipped"
    phase = to_float32_wrapped(phase)
    mag = np.stack([np.asarray(v.data, np.float32) for v in mag_vols], axis=3)
    _check_magnitude(mag, list(mag_files))
    if b0 is None:
        b0 = DEFAULT_B0_T
        warnings.append(f"field strength not given and not in the headers: assuming {DEFAULT_B0_T} T")
    b0 = float(b0)
    if not np.isfinite(b0) or not 0.1 <= b0 <= 20.0:
        raise InputError(f"field strength {b0} T is implausible (expected 0.1..20 T)", source)
    direction, dir_how = _b0_direction(b0_dir, sidecar_b0_dir, ref.ras_from_ijk, source)
    return MultiEchoGRE(magnitude=mag, phase_rad=phase, te_s=te, b0_tesla=b0,
                        ras_from_ijk=ref.ras_from_ijk.copy(), b0_dir_ijk=direction,
                        phase_scaling=how + f"; B0 direction from {dir_how}", source=str(source),
                        warnings=warnings)


def gre_from_echo_volumes(magnitude, phase, infos_magnitude, infos_phase, b0=None, b0_dir=None,
                          te=None) -> MultiEchoGRE:
    """``MultiEchoGRE`` from per-echo magnitude and phase ``Volume``s loaded elsewhere (e.g. by
    Slicer's DICOM module) and the ``DicomEchoInfo`` of each (``dicom_series.dicom_echo_info`` on the
    files behind it). Echoes are ordered by echo time; the parts must be what the headers say; the
    phase scaling is detected on the values; GE phase is negated. ``te``/``b0``/``b0_dir`` override."""
    mags, phases = list(magnitude), list(phase)
    if len(infos_magnitude) != len(mags) or len(infos_phase) != len(phases):
        raise InputError("one DicomEchoInfo is needed per volume")
    for vols, infos, want in ((mags, infos_magnitude, "magnitude"), (phases, infos_phase, "phase")):
        for v, info in zip(vols, infos):
            if info.part not in (None, want):
                raise InputError(f"the DICOM headers say this volume is {info.part}, not {want}",
                                 v.name or None)
    def order(infos):
        return np.argsort([np.inf if i.te_s is None else i.te_s for i in infos], kind="stable")
    om, op = order(infos_magnitude), order(infos_phase)
    mags, phases = [mags[i] for i in om], [phases[i] for i in op]
    im, ip = [infos_magnitude[i] for i in om], [infos_phase[i] for i in op]
    header_te = [i.te_s for i in ip]
    if te is None:
        te = None if any(t is None for t in header_te) else header_te
        mag_te = [i.te_s for i in im]
        if te is not None and None not in mag_te and len(mag_te) == len(te) and \
                not np.allclose(mag_te, te, atol=1e-6):
            raise InputError(f"magnitude echo times {mag_te} differ from the phase echo times {te} s")
    b0s = [i.b0_tesla for i in im + ip if i.b0_tesla]
    names = [v.name or f"volume {n + 1}" for n, v in enumerate(mags + phases)]
    return assemble_gre(mags, phases, names[:len(mags)], names[len(mags):], te,
                        b0 if b0 is not None else (b0s[0] if b0s else None), b0_dir,
                        ge_phase=any(i.ge_phase for i in ip), source="DICOM volumes")


def _sidecar_te(files: list[Path]) -> list | None:
    sides = [bids_mod.read_sidecar(f) for f in files]
    if len(set(map(str, files))) == 1 and sides[0].get("EchoTimes"):   # one 4-D file
        return list(sides[0]["EchoTimes"])
    te = [s.get("EchoTime") for s in sides]
    return te if te and all(t is not None for t in te) else None


def _sidecar_values(phase_files: list[Path], mag_files: list[Path]):
    """EchoTimes, field strength, B0DirectionIJK and GE-ness from the JSON sidecars."""
    sides = [bids_mod.read_sidecar(f) for f in dict.fromkeys(list(phase_files) + list(mag_files))]
    te = _sidecar_te(phase_files) or _sidecar_te(mag_files)
    b0 = next((s["MagneticFieldStrength"] for s in sides if s.get("MagneticFieldStrength")), None)
    b0_dir = next((s["B0DirectionIJK"] for s in sides if s.get("B0DirectionIJK")), None)
    ge = any(str(s.get("Manufacturer", "")).upper().startswith("GE") for s in sides)
    units = {str(bids_mod.read_sidecar(f).get("Units", "")).strip().lower() for f in phase_files}
    units = units.pop() if len(units) == 1 else None
    return te, b0, b0_dir, ge, units or None


def _load_nifti(mag_files, phase_files, te, b0, b0_dir, source) -> MultiEchoGRE:
    mag_vols, mfiles = _split_echoes(mag_files, "magnitude")
    pha_vols, pfiles = _split_echoes(phase_files, "phase")
    side_te, side_b0, side_dir, ge, units = _sidecar_values(pfiles, mfiles)
    warnings = []
    if te is None:
        te = side_te
    elif side_te is not None and len(side_te) == len(te) and \
            not np.allclose(np.asarray(side_te, float), np.asarray(te, float), rtol=1e-3):
        warnings.append(f"echo times given ({list(te)}) override the sidecars ({side_te})")
    return assemble_gre(mag_vols, pha_vols, mfiles, pfiles, te, side_b0 if b0 is None else b0,
                        b0_dir, sidecar_b0_dir=side_dir, ge_phase=ge, phase_units=units, source=source,
                        warnings=warnings)


def _load_dicom(mag_dirs, phase_dirs, te, b0, b0_dir) -> MultiEchoGRE:
    """DICOM through dcm2niix. The project's own reader serves only where dcm2niix cannot: enhanced
    multi-frame files without a dimension index (dcm2niix stacks the frames of all echoes as slices)."""
    from .dcm2niix import load_dicom_gre
    try:
        return load_dicom_gre(mag_dirs, phase_dirs, te=te, b0=b0, b0_dir=b0_dir)
    except InputError as dcm2niix_error:
        from .dicom_series import enhanced_without_dimension_index, load_dicom_gre as read_frames
        files = enhanced_without_dimension_index(list(mag_dirs) + list(phase_dirs))
        if not files:
            raise
        gre = read_frames(mag_dirs, phase_dirs, te=te, b0=b0, b0_dir=b0_dir)
        gre.warnings.append(f"dcm2niix could not sort {Path(files[0]).name} (enhanced DICOM without a "
                            f"dimension index: {dcm2niix_error.problem}); its frames were sorted by "
                            "echo time and position instead")
        return gre


def load_gre(bids=None, mag=None, phase=None, te=None, b0=None, b0_dir=None,
             subject=None) -> MultiEchoGRE:
    """Read a multi-echo GRE.

    - ``bids``: a BIDS dataset, subject or ``anat`` directory (``*_echo-N_part-mag|phase_MEGRE``
      with sidecars), a DICOM directory holding magnitude and phase series, or a converter's
      (dcm2niix) output folder of echo files with sidecars;
    - ``mag``/``phase``: lists of paths, one 3-D file per echo, or one 4-D file (echoes last), or
      DICOM directories (the same directory for both is split by ImageType);
    - ``te``: echo times in seconds (required unless in sidecars/DICOM headers; overrides them);
    - ``b0``: field strength in T (else from the headers, else 3 T with a warning);
    - ``b0_dir``: unit B0 direction in the voxel (i, j, k) frame, overriding the one derived from
      the image direction matrix (B0 along RAS S, i.e. scanner z, head first);
    - ``subject``: BIDS subject label when the dataset holds several.
    """
    mag_files, phase_files = _as_paths(mag), _as_paths(phase)
    if bids is not None:
        if mag_files or phase_files:
            raise InputError("give either a BIDS directory or magnitude/phase files, not both", bids)
        root = Path(bids)
        if not root.exists():
            raise InputError("directory not found", root)
        try:
            mags, phases = bids_mod.find_megre(root, subject)
        except InputError as not_bids:
            if "no multi-echo GRE" not in not_bids.problem:
                raise
            if _is_dicom_dir(root):
                return _load_dicom([root], [root], te, b0, b0_dir)
            try:
                mags, phases = bids_mod.find_converted_gre(root)
            except InputError as not_converted:
                if "no multi-echo GRE" in not_converted.problem:
                    raise not_bids from None
                raise
        return _load_nifti(mags, phases, te, b0, b0_dir, source=root)
    if not mag_files or not phase_files:
        raise InputError("give a BIDS directory (--bids) or both magnitude and phase (--mag, --phase)")
    for p in mag_files + phase_files:
        if not p.exists():
            raise InputError("file not found", p)
    if any(p.is_dir() for p in mag_files + phase_files):
        return _load_dicom(mag_files, phase_files, te, b0, b0_dir)
    source = mag_files[0].parent if len(mag_files) > 1 else mag_files[0]
    return _load_nifti(mag_files, phase_files, te, b0, b0_dir, source=source)


# command line ------------------------------------------------------------------------------------
def add_gre_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bids DIR | --mag F... --phase F... --te S...``, ``--b0 T``, ``--b0-dir x,y,z``, ``--subject``."""
    from .text import vec3
    g = parser.add_argument_group("multi-echo GRE input (BIDS, NIfTI or DICOM)")
    g.add_argument("--bids", metavar="DIR", help="BIDS dataset/subject/anat directory with "
                   "*_echo-N_part-mag|phase_MEGRE.nii.gz and JSON sidecars, or a DICOM directory")
    g.add_argument("--mag", nargs="+", metavar="F", help="magnitude: one 3-D file per echo, one 4-D "
                   "file, or a DICOM directory")
    g.add_argument("--phase", nargs="+", metavar="F", help="phase, as --mag (any scaling: radians, "
                   "[-4096,4095], [0,4095], mrad, or a range rescaled to [-pi,pi))")
    g.add_argument("--te", nargs="+", type=float, metavar="S", help="echo times in seconds "
                   "(needed unless sidecars or DICOM headers have them)")
    g.add_argument("--b0", type=float, metavar="T", help="field strength in tesla (default: headers, "
                   "else 3)")
    g.add_argument("--b0-dir", type=vec3, metavar="x,y,z", help="B0 direction in the voxel (i,j,k) "
                   "frame (default: from the image orientation)")
    g.add_argument("--subject", metavar="ID", help="BIDS subject when the dataset has several")


def gre_from_args(args) -> MultiEchoGRE:
    """The GRE named by the arguments of ``add_gre_arguments``."""
    bids = getattr(args, "bids", None)
    if bids is None and not (getattr(args, "mag", None) or getattr(args, "phase", None)):
        raise InputError("no GRE input: give --bids DIR or --mag F... --phase F... --te S...")
    return load_gre(bids=bids, mag=getattr(args, "mag", None), phase=getattr(args, "phase", None),
                    te=getattr(args, "te", None), b0=getattr(args, "b0", None),
                    b0_dir=getattr(args, "b0_dir", None), subject=getattr(args, "subject", None))
