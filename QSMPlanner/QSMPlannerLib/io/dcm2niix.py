"""DICOM -> NIfTI + BIDS sidecars through dcm2niix (the PyPI wheel ships the binary).

dcm2niix handles the vendor quirks the field has met: Siemens CSA headers and mosaics, Philips
private scale slopes and enhanced multi-frame DICOM, GE private image types, echoes that share
instance numbers. Each converted image is classified here from its sidecar and dcm2niix's file-name
suffixes: magnitude, phase (``_ph``, ImageType P/PHASE), a scanner field map in Hz (``_fieldmaphz``,
``Units: Hz``), real or imaginary. The NIfTI affine is voxel -> RAS mm (dcm2niix writes RAS).
Conversion runs in a temporary directory; the DICOM input is only read.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ProcessingError
from ..volume import Volume

PARTS = ("magnitude", "phase", "fieldmap_hz", "real", "imaginary")
_TIMEOUT_S = 600


@dataclass
class ConvertedImage:
    """One image dcm2niix wrote: its data (RAS geometry), sidecar and what it is."""
    volume: Volume                 # 3-D or 4-D, voxel -> RAS mm
    sidecar: dict                  # the BIDS JSON dcm2niix wrote
    part: str | None               # one of PARTS, or None when the headers do not say
    name: str                      # dcm2niix's output file name (without extension)
    source: Path                   # the DICOM directory it came from
    warnings: list = field(default_factory=list)

    @property
    def te_s(self) -> float | None:
        te = self.sidecar.get("EchoTime")
        return None if te is None else float(te)

    @property
    def echo_number(self) -> int | None:
        n = self.sidecar.get("EchoNumber")
        return None if n is None else int(n)

    @property
    def manufacturer(self) -> str:
        return str(self.sidecar.get("Manufacturer", "") or "")


def binary() -> str:
    """Path of the dcm2niix executable of the installed wheel (``ProcessingError`` if missing)."""
    try:
        import dcm2niix
    except ImportError as exc:
        raise ProcessingError("dcm2niix is not installed (pip install dcm2niix): it converts DICOM "
                              "input") from exc
    path = Path(dcm2niix.bin)
    if not path.is_file():
        raise ProcessingError(f"the dcm2niix wheel has no executable at {path}")
    return str(path)


def part_of(name: str, sidecar: dict) -> str | None:
    """What a converted image is, from dcm2niix's name suffixes and the sidecar's ImageType/Units."""
    tokens = [str(t).upper() for t in (sidecar.get("ImageType") or [])]
    lname = name.lower()
    if lname.endswith("_phmag"):    # dcm2niix: phase and magnitude frames mixed in one stack
        return None
    if lname.endswith("_fieldmaphz") or "FIELDMAPHZ" in tokens or \
            str(sidecar.get("Units", "")).strip().lower() == "hz":
        return "fieldmap_hz"
    if lname.endswith("_ph") or "P" in tokens or "PHASE" in tokens:
        return "phase"
    if lname.endswith("_real") or "R" in tokens or "REAL" in tokens:
        return "real"
    if lname.endswith("_imaginary") or "I" in tokens or "IMAGINARY" in tokens:
        return "imaginary"
    if "M" in tokens or "MAGNITUDE" in tokens:
        return "magnitude"
    return None


def convert(directory) -> list[ConvertedImage]:
    """Convert every DICOM series under ``directory`` (any depth) with dcm2niix.

    ``InputError`` naming the directory when it holds no convertible DICOM; images are read into
    memory before the temporary output is removed.
    """
    import nibabel as nib
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError("not a directory (a DICOM series directory was expected)", directory)
    with tempfile.TemporaryDirectory(prefix="qsmplanner_dcm2niix_") as out:
        # -g i: ignore any user defaults file; -ba y: anonymised sidecars; -z n: no compression
        cmd = [binary(), "-g", "i", "-b", "y", "-ba", "y", "-z", "n", "-d", "9", "-f", "series%s",
               "-o", out, str(directory)]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise ProcessingError(f"dcm2niix did not finish within {_TIMEOUT_S} s on {directory}") from exc
        log = (run.stdout or "") + (run.stderr or "")
        images = []
        for nii in sorted(Path(out).glob("*.nii")):
            stem = nii.name[:-4]
            side = nii.with_suffix(".json")
            sidecar = json.loads(side.read_text()) if side.exists() else {}
            img = nib.load(str(nii))
            data = np.asarray(img.dataobj)   # scl_slope / scl_inter applied
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            vol = Volume(np.ascontiguousarray(data), img.affine, stem)
            notes = [ln.strip() for ln in log.splitlines() if ln.lower().startswith("warning")]
            images.append(ConvertedImage(vol, sidecar, part_of(stem, sidecar), stem, directory, notes))
    if not images:
        first = next((ln for ln in log.splitlines() if "error" in ln.lower() or "no valid" in ln.lower()),
                     "no DICOM images found")
        raise InputError(f"dcm2niix converted nothing here ({first.strip()})", directory)
    return images


def convert_all(directories) -> dict[Path, list[ConvertedImage]]:
    """``convert`` each distinct directory once."""
    return {Path(d): convert(d) for d in dict.fromkeys(Path(d) for d in directories)}


def load_dicom_gre(mag_dirs, phase_dirs, te=None, b0=None, b0_dir=None):
    """``MultiEchoGRE`` from DICOM directories through dcm2niix.

    Images are sorted into magnitude and phase by their headers; where the headers do not say, the
    directory decides (given only as ``phase_dirs`` -> phase). Echoes pair by echo time. A phase
    difference (sidecar EchoTime1/EchoTime2, e.g. Siemens gre_field_mapping) is a single echo with
    TE = EchoTime2 - EchoTime1, paired with the magnitude of the first echo. A scanner field map in
    Hz is refused with a pointer to ``--total-field``. ``te`` (s), ``b0`` (T) and ``b0_dir`` (voxel
    frame) override the headers.
    """
    from .loaders import assemble_gre
    mag_dirs, phase_dirs = [Path(d) for d in mag_dirs], [Path(d) for d in phase_dirs]
    converted = convert_all(mag_dirs + phase_dirs)
    mags, phases, fieldmaps, warnings = [], [], [], []
    skipped = {}
    for d, images in converted.items():
        for im in images:
            warnings.extend(w for w in im.warnings if w not in warnings)
            part = im.part
            if part is None:
                part = "phase" if d in phase_dirs and d not in mag_dirs else "magnitude"
            if part == "magnitude" and (d in mag_dirs):
                mags.append(im)
            elif part == "phase" and (d in phase_dirs):
                phases.append(im)
            elif part == "fieldmap_hz":
                fieldmaps.append(im)
            elif part in ("real", "imaginary"):
                skipped[part] = skipped.get(part, 0) + 1
    for part, n in skipped.items():
        warnings.append(f"{n} {part} image(s) ignored")
    where = (phase_dirs or mag_dirs)[0]
    if not phases:
        hint = (" (this series is a scanner B0 field map in Hz: give it as --total-field)"
                if fieldmaps else "")
        raise InputError("no phase images found (dcm2niix found none with ImageType P/PHASE or a "
                         f"_ph suffix){hint}", where)
    if not mags:
        raise InputError("no magnitude images found", mag_dirs[0] if mag_dirs else where)
    for im in mags + phases:
        if im.volume.data.ndim != 3:
            raise InputError(f"dcm2niix wrote a 4-D image ({im.volume.data.shape}) for one echo: several "
                             "volumes in one series are not a multi-echo GRE", im.source)
    phase_te = [_te_of(im) for im in phases]
    if len(phases) == 1 and _phase_difference_te(phases[0]) is not None:
        dte, te1 = _phase_difference_te(phases[0])
        mags = [min(mags, key=lambda m: abs((m.te_s or 0) - te1))]
        phase_te = [dte]
        warnings.append(f"phase difference image: one echo with TE = EchoTime2 - EchoTime1 = "
                        f"{1000 * dte:.3g} ms, magnitude of the first echo")
    else:
        mags = _pair_by_te(mags, phases)
    order = np.argsort([np.inf if t is None else t for t in phase_te])
    phases = [phases[i] for i in order]
    mags = [mags[i] for i in order]
    phase_te = [phase_te[i] for i in order]
    header_te = None if any(t is None for t in phase_te) else phase_te
    sides = [im.sidecar for im in mags + phases]
    header_b0 = next((float(s["MagneticFieldStrength"]) for s in sides if s.get("MagneticFieldStrength")),
                     None)
    if header_b0 is not None and header_b0 > 100:   # some GE headers give gauss
        header_b0 /= 10000.0
    manufacturer = next((im.manufacturer for im in phases if im.manufacturer), "")
    units = {str(im.sidecar.get("Units", "")).strip().lower() for im in phases} - {""}
    dirs = list(dict.fromkeys(str(d) for d in mag_dirs + phase_dirs))
    gre = assemble_gre([m.volume for m in mags], [p.volume for p in phases],
                       [m.source / m.name for m in mags], [p.source / p.name for p in phases],
                       header_te if te is None else te, header_b0 if b0 is None else b0, b0_dir,
                       ge_phase=manufacturer.upper().startswith("GE"),
                       phase_units=units.pop() if len(units) == 1 else None,
                       source=dirs[0] if len(dirs) == 1 else "; ".join(dirs), warnings=warnings)
    gre.phase_scaling += f"; DICOM from {manufacturer or 'unknown manufacturer'} via dcm2niix"
    return gre


def _te_of(im: ConvertedImage) -> float | None:
    diff = _phase_difference_te(im)
    return diff[0] if diff is not None else im.te_s


def _phase_difference_te(im: ConvertedImage):
    """(TE2 - TE1, TE1) in s for a phase-difference image, else None."""
    s = im.sidecar
    if s.get("EchoTime1") is None or s.get("EchoTime2") is None or s.get("EchoTimes"):
        return None
    te1, te2 = float(s["EchoTime1"]), float(s["EchoTime2"])
    return (te2 - te1, te1) if te2 > te1 else None


def _pair_by_te(mags, phases):
    """The magnitude image of each phase echo (same echo time, else same echo number)."""
    out = []
    for ph in phases:
        match = [m for m in mags if ph.te_s is not None and m.te_s is not None
                 and abs(m.te_s - ph.te_s) < 1e-6]
        if len(match) != 1:
            match = [m for m in mags if ph.echo_number is not None and m.echo_number == ph.echo_number]
        if len(match) != 1 and len(mags) == len(phases):
            match = [mags[phases.index(ph)]]
        if len(match) != 1:
            te = "?" if ph.te_s is None else f"{1000 * ph.te_s:.4g} ms"
            raise InputError(f"no magnitude echo matches the phase echo {ph.name} (TE {te}); "
                             f"magnitude echoes: {', '.join(m.name for m in mags)}", ph.source)
        out.append(match[0])
    if len({id(m) for m in out}) != len(out):
        raise InputError("several phase echoes pair with one magnitude echo", phases[0].source)
    return out


def load_dicom_field(directory) -> tuple[Volume, dict]:
    """A scanner B0 field map in Hz (GE, Philips B0 map series) and its sidecar, through dcm2niix."""
    images = convert(directory)
    maps = [im for im in images if im.part == "fieldmap_hz"]
    if not maps:
        parts = ", ".join(sorted({im.part or "unlabelled" for im in images}))
        raise InputError(f"no field map in Hz in this DICOM directory (dcm2niix found: {parts}); a "
                         "phase series is read with --mag/--phase", directory)
    if len(maps) > 1:
        raise InputError(f"{len(maps)} field maps in Hz in this DICOM directory; give one series",
                         directory)
    return maps[0].volume, maps[0].sidecar
