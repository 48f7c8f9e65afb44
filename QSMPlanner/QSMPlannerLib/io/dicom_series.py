"""DICOM series: planning volumes (T1, CT) and multi-echo GRE from Siemens, GE and Philips.

DICOM geometry is LPS: ImagePositionPatient (IPP) is the centre of the first voxel of a slice,
ImageOrientationPatient (IOP) holds the directions of increasing column index (i) and increasing row
index (j), PixelSpacing is [row spacing (along j), column spacing (along i)]. Slices are ordered by
their position along the slice normal. The result is converted to RAS (``ras_from_ijk``) here.

Multi-echo GRE: every image is sorted into magnitude or phase (ComplexImageComponent, ImageType
'M'/'P' (Siemens, Philips), GE private (0043,102F), Philips private (2005,1011)) and into an echo
(EchoNumbers and EchoTime). Pixel values get the modality rescale (slope/intercept); the phase
scaling is then detected like for NIfTI. B0 comes from MagneticFieldStrength; GE phase is negated.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import LPS_FROM_RAS, Volume

GE_IMAGE_TYPE_TAG = (0x0043, 0x102F)       # GE private: 0 magnitude, 1 phase, 2 real, 3 imaginary
PHILIPS_IMAGE_TYPE_TAG = (0x2005, 0x1011)  # Philips private: 'M', 'P', 'R', 'I'
_GE_PARTS = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}
_LETTER_PARTS = {"M": "magnitude", "P": "phase", "R": "real", "I": "imaginary"}


def _dicom_files(directory: Path) -> list[Path]:
    """Files under ``directory`` that are DICOM (preamble 'DICM', or a .dcm/.ima name)."""
    out = []
    for p in sorted(Path(directory).rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.name.upper() == "DICOMDIR":
            continue
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if (len(head) == 132 and head[128:132] == b"DICM") or p.suffix.lower() in (".dcm", ".ima"):
            out.append(p)
    return out


def enhanced_without_dimension_index(directories) -> list[Path]:
    """Enhanced multi-frame DICOM files under ``directories`` that carry no DimensionIndexSequence:
    dcm2niix cannot tell their echoes apart, the frame reader below can."""
    import pydicom
    out = []
    for d in directories:
        for f in (_dicom_files(d) if Path(d).is_dir() else []):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True,
                                     specific_tags=["NumberOfFrames", "DimensionIndexSequence"])
            except Exception:
                continue
            if int(ds.get("NumberOfFrames", 1) or 1) > 1 and not ds.get("DimensionIndexSequence"):
                out.append(f)
    return out


def has_dicom(directory) -> bool:
    directory = Path(directory)
    return directory.is_dir() and bool(_dicom_files(directory))


# single volumes (T1, CT) ----------------------------------------------------------------------
def read_dicom_volume(directory) -> Volume:
    """One DICOM series in ``directory`` (or its only sub-folder with DICOM) as a RAS ``Volume``,
    read with SimpleITK's ImageSeriesReader (slices sorted by position, modality rescale applied)."""
    import SimpleITK as sitk
    directory = Path(directory)
    files = _dicom_files(directory)
    if not files:
        raise InputError("no DICOM files in this directory", directory)
    folders = sorted({f.parent for f in files})
    series = []
    for folder in folders:
        for sid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ():
            series.append((folder, sid))
    if not series:
        raise InputError("no readable DICOM image series in this directory", directory)
    if len(series) > 1:
        raise InputError(f"{len(series)} DICOM series found here; give the folder of one series "
                         f"(series UIDs: {', '.join(s[1] for s in series[:5])})", directory)
    folder, sid = series[0]
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid)
    if len(names) == 1:   # one enhanced multi-frame file: stack its frames ourselves
        return _read_multiframe_volume(Path(names[0]), directory)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    img = reader.Execute()
    if img.GetDimension() != 3 or img.GetSize()[2] < 2:
        raise InputError(f"the DICOM series is not a 3-D volume (size {img.GetSize()})", directory)
    _check_single_position_per_slice(names, directory)
    vol = Volume.from_sitk(img, directory.name)
    vol.meta["dicom_files"] = len(names)
    return vol


def _read_multiframe_volume(path: Path, directory) -> Volume:
    import pydicom
    ds = pydicom.dcmread(path)
    frames = _frames(ds, path) if "PixelData" in ds else []
    if len(frames) < 2:
        raise InputError("the DICOM series is a single 2-D image, not a 3-D volume", directory)
    tes = {fr["te_ms"] for fr in frames}
    if len(tes) > 1:
        raise InputError(f"the DICOM file holds {len(tes)} echo times: a multi-echo series, not one "
                         "3-D volume", path)
    vol = _slice_stack(frames, path)
    vol.name = Path(directory).name
    vol.meta["dicom_files"] = 1
    return vol


def _check_single_position_per_slice(names, directory) -> None:
    """A series whose slices repeat positions (e.g. several echoes) is not one volume."""
    import pydicom
    positions = []
    for n in names:
        ds = pydicom.dcmread(n, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        ipp = ds.get("ImagePositionPatient")
        if ipp is not None:
            positions.append(tuple(np.round(np.asarray(ipp, float), 3)))
    if len(set(positions)) < len(positions):
        raise InputError("the DICOM series repeats slice positions (several echoes or volumes in one "
                         "series?); it is not a single 3-D volume", directory)


# multi-echo GRE -------------------------------------------------------------------------------
def _tokens(values) -> list[str]:
    if values is None:
        return []
    values = [values] if isinstance(values, str) else list(values)
    return [str(v).strip().upper() for v in values]


def _private_int(ds, tag):
    elem = ds.get(tag)
    if elem is None:
        return None
    v = elem.value
    if isinstance(v, (bytes, bytearray)):   # implicit VR: raw little-endian SS/SL
        return int.from_bytes(v, "little", signed=True) if len(v) in (2, 4) else None
    if not isinstance(v, (int, float, str)):
        v = v[0] if len(v) else None
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _part_from_tokens(tokens) -> str | None:
    for t in tokens[2:] or tokens:
        if t in ("P", "PHASE", "PHASE MAP", "PHASE_MAP") or t.startswith("P_"):
            return "phase"
        if t in ("M", "MAGNITUDE", "MAG") or t.startswith("M_"):
            return "magnitude"
        if t in ("R", "REAL") or t.startswith("R_"):
            return "real"
        if t in ("I", "IMAGINARY") or t.startswith("I_"):
            return "imaginary"
    return None


def image_part(ds, frame_type=None) -> str | None:
    """'magnitude', 'phase', 'real', 'imaginary' or None (not stated) from the header
    (``frame_type``: the per-frame MR Image Frame Type item of an enhanced DICOM frame)."""
    for src in (frame_type, ds):
        if src is None:
            continue
        comp = str(src.get("ComplexImageComponent", "") or "").upper()
        if comp in ("MAGNITUDE", "PHASE", "REAL", "IMAGINARY"):
            return comp.lower()
    manufacturer = str(ds.get("Manufacturer", "") or "").upper()
    if manufacturer.startswith("GE"):
        v = _private_int(ds, GE_IMAGE_TYPE_TAG)
        if v in _GE_PARTS:
            return _GE_PARTS[v]
    if "PHILIPS" in manufacturer and frame_type is None:
        elem = ds.get(PHILIPS_IMAGE_TYPE_TAG)
        if elem is not None:
            v = elem.value.decode(errors="ignore") if isinstance(elem.value, bytes) else str(elem.value)
            if v.strip().upper()[:1] in _LETTER_PARTS:
                return _LETTER_PARTS[v.strip().upper()[:1]]
    if frame_type is not None:
        part = _part_from_tokens(_tokens(frame_type.get("FrameType")))
        if part:
            return part
    return _part_from_tokens(_tokens(ds.get("ImageType")))


def _field_strength_t(ds) -> float | None:
    v = ds.get("MagneticFieldStrength")
    if v in (None, ""):
        return None
    v = float(v)
    return v / 10000.0 if v > 100 else v   # some old GE headers give gauss


def _item(seq_owner, name):
    """First item of sequence ``name`` in ``seq_owner`` (or None)."""
    if seq_owner is None:
        return None
    seq = seq_owner.get(name)
    return seq[0] if seq else None


def _frames(ds, path):
    """One record per 2-D image of a file: classic (one) or enhanced multi-frame (NumberOfFrames).

    Record keys: iop, ipp, spacing [row, col], thickness, rows, cols, slope, intercept, te_ms,
    echo_no, part, file, pixels() -> 2-D array [row, col].
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        shared = _item(ds, "SharedFunctionalGroupsSequence")
        cache = {}

        def frame_pixels(n):
            def get():
                if "all" not in cache:
                    cache["all"] = ds.pixel_array
                arr = cache["all"]
                return arr[n] if arr.ndim == 3 else arr
            return get

        out = []
        for n, frame in enumerate(per_frame):
            def find(seq_name, attr, default=None):
                for group in (frame, shared):
                    it = _item(group, seq_name)
                    if it is not None and attr in it:
                        return it.get(attr)
                return default
            ipp = find("PlanePositionSequence", "ImagePositionPatient")
            iop = find("PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = find("PixelMeasuresSequence", "PixelSpacing")
            if ipp is None or iop is None or spacing is None:
                raise InputError(f"enhanced DICOM frame {n + 1} lacks position/orientation/spacing", path)
            frame_type = _item(frame, "MRImageFrameTypeSequence") or _item(shared, "MRImageFrameTypeSequence")
            te = find("MREchoSequence", "EffectiveEchoTime")
            out.append(dict(
                iop=np.asarray(iop, float), ipp=np.asarray(ipp, float), spacing=np.asarray(spacing, float),
                thickness=float(find("PixelMeasuresSequence", "SliceThickness", 0) or 0),
                rows=rows, cols=cols,
                slope=float(find("PixelValueTransformationSequence", "RescaleSlope", None)
                            or ds.get("RescaleSlope", 1.0) or 1.0),
                intercept=float(find("PixelValueTransformationSequence", "RescaleIntercept", None)
                                or ds.get("RescaleIntercept", 0.0) or 0.0),
                te_ms=None if te in (None, "") else float(te), echo_no=None,
                part=image_part(ds, frame_type), file=path, pixels=frame_pixels(n)))
        return out
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return []
    te = ds.get("EchoTime")
    echo_no = ds.get("EchoNumbers")
    if echo_no not in (None, "") and not isinstance(echo_no, (int, float, str)):
        echo_no = echo_no[0] if len(echo_no) else None
    return [dict(
        iop=np.asarray(ds.ImageOrientationPatient, float), ipp=np.asarray(ds.ImagePositionPatient, float),
        spacing=np.asarray(ds.PixelSpacing, float),
        thickness=float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or 0),
        rows=rows, cols=cols, slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        te_ms=None if te in (None, "") else float(te),
        echo_no=None if echo_no in (None, "") else int(echo_no),
        part=image_part(ds), file=path, pixels=lambda: ds.pixel_array)]


def _slice_stack(frames, where) -> Volume:
    """Frames (records of ``_frames``) of one echo and part -> ``Volume`` (rescaled, RAS geometry)."""
    iop = frames[0]["iop"]
    row_dir, col_dir = iop[:3], iop[3:]  # directions of increasing column (i) and row (j) index
    for fr in frames:
        if not np.allclose(fr["iop"], iop, atol=1e-4):
            raise InputError("slices of one echo have different orientations", fr["file"])
    normal = np.cross(row_dir, col_dir)
    frames = sorted(frames, key=lambda fr: float(np.dot(normal, fr["ipp"])))
    ipp = np.array([fr["ipp"] for fr in frames])
    dist = ipp @ normal
    if len(frames) > 1 and np.min(np.diff(dist)) < 1e-3:
        i = int(np.argmin(np.diff(dist)))
        raise InputError("two images of one echo share a slice position (several acquisitions in one "
                         "directory? give one series per directory)", frames[i + 1]["file"])
    rows, cols, spacing = frames[0]["rows"], frames[0]["cols"], frames[0]["spacing"]
    if len(frames) > 1:
        steps = np.diff(ipp, axis=0)
        step = (ipp[-1] - ipp[0]) / (len(frames) - 1)
        if np.abs(steps - step).max() > max(1e-2, 1e-3 * np.linalg.norm(step)):
            raise InputError("slices are not evenly spaced (missing slices?)", where)
    else:
        step = normal * (frames[0]["thickness"] or 1.0)
    data = np.empty((cols, rows, len(frames)), np.float64)
    for k, fr in enumerate(frames):
        if (fr["rows"], fr["cols"]) != (rows, cols) or not np.allclose(fr["spacing"], spacing, atol=1e-4):
            raise InputError(f"slice size {fr['rows']}x{fr['cols']} or pixel spacing differs from the "
                             "first slice of the echo", fr["file"])
        try:
            px = np.asarray(fr["pixels"](), np.float64)
        except Exception as exc:  # compressed without a decoder, truncated file...
            raise InputError(f"cannot decode the pixel data ({exc.__class__.__name__}: {exc})",
                             fr["file"]) from exc
        data[:, :, k] = (px * fr["slope"] + fr["intercept"]).T   # pixels are [row j, column i]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[1]
    lps[:3, 1] = col_dir * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = ipp[0]
    return Volume(data, LPS_FROM_RAS @ lps, Path(frames[0]["file"]).name)


@dataclass
class DicomEchoInfo:
    """What the DICOM attributes behind one loaded volume say about it (for volumes that Slicer's
    DICOM module loaded: the pixels come from Slicer, the meaning from here)."""
    te_s: float | None            # echo time (s); None when the headers have none
    part: str | None              # "magnitude" | "phase" | "real" | "imaginary" | None (not stated)
    b0_tesla: float | None        # MagneticFieldStrength (gauss converted)
    manufacturer: str
    echo_number: int | None
    value_range: tuple | None     # (lo, hi) the stored values can take after the modality rescale
    ge_phase: bool                # GE phase: sign is flipped on reading


def dicom_echo_info(datasets) -> DicomEchoInfo:
    """Echo time, magnitude/phase part, field strength and value range from the DICOM files (paths or
    pydicom datasets) behind one volume. All frames must share one echo time and one part
    (``InputError`` otherwise). Scaling to radians is decided on the pixel values by
    ``io.phase.detect_phase_scaling`` (``io.loaders.gre_from_echo_volumes`` does both)."""
    import pydicom
    records, first = [], None
    for item in datasets:
        ds = item if isinstance(item, pydicom.Dataset) else pydicom.dcmread(item, stop_before_pixels=True)
        where = getattr(ds, "filename", None) or (None if isinstance(item, pydicom.Dataset) else item)
        first = first or (ds, where)
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if per_frame:
            shared = _item(ds, "SharedFunctionalGroupsSequence")
            for frame in per_frame:
                ft = _item(frame, "MRImageFrameTypeSequence") or _item(shared, "MRImageFrameTypeSequence")
                echo = _item(frame, "MREchoSequence") or _item(shared, "MREchoSequence")
                te = None if echo is None else echo.get("EffectiveEchoTime")
                pvt = _item(frame, "PixelValueTransformationSequence") or \
                    _item(shared, "PixelValueTransformationSequence")
                records.append((te, image_part(ds, ft), pvt or ds, ds, where))
        else:
            records.append((ds.get("EchoTime"), image_part(ds), ds, ds, where))
    if not records:
        raise InputError("no DICOM files given for the volume")
    tes = {round(float(r[0]), 4) for r in records if r[0] not in (None, "")}
    parts = {r[1] for r in records}
    where = first[1]
    if len(tes) > 1:
        raise InputError(f"the files behind one volume hold {len(tes)} echo times "
                         f"({sorted(tes)} ms): load each echo as its own volume", where)
    if len(parts) > 1:
        raise InputError(f"the files behind one volume mix {', '.join(sorted(map(str, parts)))} images",
                         where)
    ds = first[0]
    lo = hi = None
    for _, _, scale, hdr, _ in records:
        bits = int(hdr.get("BitsStored", 16) or 16)
        signed = int(hdr.get("PixelRepresentation", 0) or 0) == 1
        smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        slope = float(scale.get("RescaleSlope", 1.0) or 1.0)
        inter = float(scale.get("RescaleIntercept", 0.0) or 0.0)
        a, b = sorted((smin * slope + inter, smax * slope + inter))
        lo, hi = (a, b) if lo is None else (min(lo, a), max(hi, b))
    echo_no = ds.get("EchoNumbers")
    if echo_no not in (None, "") and not isinstance(echo_no, (int, float, str)):
        echo_no = echo_no[0] if len(echo_no) else None
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    part = parts.pop()
    return DicomEchoInfo(te_s=tes.pop() / 1000.0 if tes else None, part=part,
                         b0_tesla=_field_strength_t(ds), manufacturer=manufacturer,
                         echo_number=None if echo_no in (None, "") else int(echo_no),
                         value_range=(lo, hi), ge_phase=part == "phase" and manufacturer.upper().startswith("GE"))


def read_dicom_gre(mag_dirs, phase_dirs) -> dict:
    """Sort the DICOM images of the given directories into echoes of magnitude and phase.

    Classic single-frame files and enhanced multi-frame files are both read. Returns
    ``{"mag": [Volume], "phase": [Volume], "mag_files": [...], "phase_files": [...],
    "te_s": [...]|None, "b0": float|None, "ge": bool, "manufacturer": str, "warnings": [...]}``,
    echoes by increasing TE.
    """
    import pydicom
    mag_dirs = [Path(d) for d in mag_dirs]
    phase_dirs = [Path(d) for d in phase_dirs]
    all_dirs = list(dict.fromkeys(mag_dirs + phase_dirs))
    groups = defaultdict(list)   # (part, echo key) -> [frame records]
    te_of = {}
    b0s, manufacturers, warnings = [], set(), []
    skipped = defaultdict(int)
    for d in all_dirs:
        if not d.is_dir():
            raise InputError("not a directory (a DICOM series directory was expected)", d)
        files = _dicom_files(d)
        if not files:
            raise InputError("no DICOM files in this directory", d)
        for f in files:
            try:
                ds = pydicom.dcmread(f)
            except Exception as exc:
                raise InputError(f"unreadable DICOM file ({exc.__class__.__name__}: {exc})", f) from exc
            frames = _frames(ds, f) if "PixelData" in ds else []
            if not frames:
                skipped["without image geometry"] += 1
                continue
            b = _field_strength_t(ds)
            if b:
                b0s.append(b)
            manufacturers.add(str(ds.get("Manufacturer", "") or "").strip())
            for fr in frames:
                part = fr["part"]
                if part is None:   # not stated in the header: the directory decides
                    in_mag, in_phase = d in mag_dirs, d in phase_dirs
                    part = "phase" if in_phase and not in_mag else "magnitude"
                if part in ("real", "imaginary"):
                    skipped[part] += 1
                    continue
                key = (fr["echo_no"], None if fr["te_ms"] is None else round(fr["te_ms"], 3))
                groups[(part, key)].append(fr)
                te_of[key] = fr["te_ms"]
    for what, n in skipped.items():
        warnings.append(f"{n} DICOM images {what} ignored" if what.startswith("without")
                        else f"{n} {what} images ignored")
    where = all_dirs[0]

    def echo_keys(groups):
        return {part: sorted((k for p, k in groups if p == part),
                             key=lambda k: (np.inf if k[1] is None else k[1], k[0] or 0))
                for part in ("magnitude", "phase")}

    keys = echo_keys(groups)
    if keys["magnitude"] != keys["phase"] and all(k[1] is not None for p, k in groups):
        by_te = defaultdict(list)   # echo numbers disagree (or are missing in one part): TE decides
        for (part, key), frames in groups.items():
            by_te[(part, (None, key[1]))].extend(frames)
        groups, te_of = by_te, {(None, k[1]): t for k, t in te_of.items()}
        keys = echo_keys(groups)
    if not keys["phase"]:
        raise InputError("no phase images found (ImageType / ComplexImageComponent / GE or Philips "
                         "image type say none is phase)", phase_dirs[0] if phase_dirs else where)
    if not keys["magnitude"]:
        raise InputError("no magnitude images found", mag_dirs[0] if mag_dirs else where)
    if keys["magnitude"] != keys["phase"]:
        raise InputError(f"magnitude echoes {keys['magnitude']} and phase echoes {keys['phase']} "
                         "(echo number, TE ms) do not match", where)
    out = {"mag": [], "phase": [], "mag_files": [], "phase_files": [], "warnings": warnings}
    for part, name in (("magnitude", "mag"), ("phase", "phase")):
        for key in keys[part]:
            frames = groups[(part, key)]
            out[name].append(_slice_stack(frames, frames[0]["file"]))
            out[name + "_files"].append(frames[0]["file"])
    tes = [te_of[k] for k in keys["phase"]]
    out["te_s"] = None if any(t is None for t in tes) else [t / 1000.0 for t in tes]
    out["b0"] = float(np.median(b0s)) if b0s else None
    out["ge"] = any(m.upper().startswith("GE") for m in manufacturers)
    out["manufacturer"] = ", ".join(sorted(m for m in manufacturers if m))
    return out


def load_dicom_gre(mag_dirs, phase_dirs, te=None, b0=None, b0_dir=None):
    """``MultiEchoGRE`` from DICOM directories (see ``read_dicom_gre``); ``te`` (s), ``b0`` (T) and
    ``b0_dir`` (voxel frame) override the headers."""
    from .loaders import assemble_gre
    found = read_dicom_gre(mag_dirs, phase_dirs)
    dirs = list(dict.fromkeys(str(d) for d in list(mag_dirs) + list(phase_dirs)))
    gre = assemble_gre(found["mag"], found["phase"], found["mag_files"], found["phase_files"],
                       found["te_s"] if te is None else te, found["b0"] if b0 is None else b0, b0_dir,
                       ge_phase=found["ge"], source=dirs[0] if len(dirs) == 1 else "; ".join(dirs),
                       warnings=found["warnings"])
    if found["manufacturer"]:
        gre.phase_scaling += f"; DICOM from {found['manufacturer']}"
    return gre
