"""BIDS layout: find the multi-echo GRE, T1 and CT of a subject; write a ``MultiEchoGRE`` as BIDS.

Multi-echo GRE files are ``sub-<id>[_ses-..]_..._echo-<N>_part-mag|phase_MEGRE.nii[.gz]`` with JSON
sidecars (``EchoTime`` in s, ``MagneticFieldStrength`` in T). A sidecar may also hold the
non-standard ``B0DirectionIJK`` (unit B0 vector in the voxel frame) that QSMPlanner writes.
Derivatives (``derivatives/``) are never searched.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .atomic import write_text
from .volumes import write_volume

MEGRE_RE = re.compile(r"^(?P<prefix>.*?)_echo-(?P<echo>\d+)(?P<mid>(?:_[a-zA-Z0-9]+-[a-zA-Z0-9]+)*?)"
                      r"_part-(?P<part>mag|phase)(?P<mid2>(?:_[a-zA-Z0-9]+-[a-zA-Z0-9]+)*)"
                      r"_MEGRE\.nii(?:\.gz)?$")
NIFTI_RE = r"\.nii(?:\.gz)?$"


def subject_label(subject) -> str:
    """``"sub-01"`` or ``"01"`` -> ``"01"`` (BIDS labels are alphanumeric)."""
    label = str(subject)
    label = label[4:] if label.startswith("sub-") else label
    label = re.sub(r"[^A-Za-z0-9]", "", label)
    if not label:
        raise ValueError(f"subject {subject!r} gives an empty BIDS label")
    return label


def _candidate_files(root: Path, subject=None):
    """NIfTI files under ``root`` (a BIDS root, subject dir or anat dir), derivatives excluded."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("BIDS directory not found", root)
    sub = None if subject is None else f"sub-{subject_label(subject)}"
    files = []
    for p in sorted(root.rglob("*.nii*")):
        rel = p.relative_to(root).parts
        if "derivatives" in rel or any(part.startswith(".") for part in rel):
            continue
        if not re.search(NIFTI_RE, p.name):
            continue
        if sub is not None and not p.name.startswith(sub + "_"):
            continue
        files.append(p)
    return files


def _first_with_suffix(root, suffixes, subject=None, folders=("anat", "ct")) -> Path | None:
    pattern = re.compile(r"_(?:" + "|".join(suffixes) + r")" + NIFTI_RE)
    hits = [p for p in _candidate_files(root, subject) if pattern.search(p.name)]
    # prefer files in the usual folders, then the shortest path (e.g. not acq-variants), then name
    hits.sort(key=lambda p: (p.parent.name not in folders, len(p.name), str(p)))
    return hits[0] if hits else None


def find_t1(bids_dir, subject=None) -> Path | None:
    """The T1-weighted image (``*_T1w.nii[.gz]``) of a BIDS dataset, subject or anat directory."""
    return _first_with_suffix(bids_dir, ["T1w"], subject)


def find_ct(bids_dir, subject=None) -> Path | None:
    """The CT (``*_ct.nii[.gz]`` or ``*_CT.nii[.gz]``) of a BIDS dataset, subject or anat directory."""
    return _first_with_suffix(bids_dir, ["ct", "CT"], subject)


def find_megre(bids_dir, subject=None) -> tuple[list[Path], list[Path]]:
    """Magnitude and phase MEGRE files ordered by echo number. Raises ``InputError`` if none,
    several subjects/runs, or echoes missing a part."""
    groups = {}
    for p in _candidate_files(bids_dir, subject):
        m = MEGRE_RE.match(p.name)
        if m:
            key = (str(p.parent), m["prefix"], m["mid"] + m["mid2"])
            groups.setdefault(key, {}).setdefault(int(m["echo"]), {})[m["part"]] = p
    if not groups:
        raise InputError("no multi-echo GRE (*_echo-N_part-mag|phase_MEGRE.nii[.gz]) found", bids_dir)
    if len(groups) > 1:
        names = ", ".join(sorted(f"{k[1]}{k[2]}" for k in groups))
        raise InputError(f"several multi-echo GRE series found ({names}); pass the subject or the "
                         "anat directory of one", bids_dir)
    echoes = next(iter(groups.values()))
    for n in sorted(echoes):
        for part in ("mag", "phase"):
            if part not in echoes[n]:
                raise InputError(f"echo {n} has no part-{part} file", next(iter(echoes[n].values())))
    order = sorted(echoes)
    return [echoes[n]["mag"] for n in order], [echoes[n]["phase"] for n in order]


_PHASE_TOKENS = {"P", "PHASE", "PHASE MAP"}
_MAG_TOKENS = {"M", "MAGNITUDE", "MAG"}
_OTHER_TOKENS = {"R", "REAL", "I", "IMAGINARY"}


def _converted_part(path: Path, side: dict) -> str | None:
    tokens = [str(t).strip().upper() for t in (side.get("ImageType") or [])]
    tokens += [str(t).strip().upper() for t in (side.get("ImageTypeText") or [])]
    if any(t in _OTHER_TOKENS for t in tokens[2:]) or re.search(r"_(real|imaginary)" + NIFTI_RE, path.name):
        return None
    if any(t in _PHASE_TOKENS for t in tokens[2:]) or re.search(r"_ph" + NIFTI_RE, path.name):
        return "phase"
    return "mag"


def find_converted_gre(directory) -> tuple[list[Path], list[Path]]:
    """Magnitude and phase echo files of a converter's (dcm2niix) output folder, e.g.
    ``GRE_5_e1.nii`` / ``GRE_6_e1_ph.nii`` with JSON sidecars (ImageType 'P' marks phase,
    EchoNumber / EchoTime order the echoes). Only the folder itself is searched."""
    directory = Path(directory)
    groups = {}
    for p in sorted(directory.iterdir()) if directory.is_dir() else []:
        if not re.search(NIFTI_RE, p.name) or p.name.startswith("."):
            continue
        side = read_sidecar(p)
        part = _converted_part(p, side)
        m = re.search(r"_e(\d+)(?:_ph)?" + NIFTI_RE, p.name)
        echo = side.get("EchoNumber") or (int(m.group(1)) if m else None)
        te = side.get("EchoTime")
        if part is None or (echo is None and te is None):
            continue
        stem = re.sub(r"(_\d+)?_e\d+(_ph)?" + NIFTI_RE, "", p.name)
        key = str(side.get("ProtocolName") or side.get("SeriesDescription") or stem)
        groups.setdefault(key, {"mag": {}, "phase": {}})[part][(te or 0.0, echo or 0)] = p
    usable = {k: g for k, g in groups.items() if g["mag"] and g["phase"]}
    if not usable:
        raise InputError("no multi-echo GRE found (neither BIDS *_MEGRE files nor converted "
                         "magnitude/phase echo files with sidecars)", directory)
    if len(usable) > 1:
        raise InputError(f"several multi-echo GRE series found ({', '.join(sorted(usable))}); "
                         "give the files with --mag/--phase", directory)
    g = next(iter(usable.values()))
    if sorted(g["mag"]) != sorted(g["phase"]):
        raise InputError(f"magnitude echoes {sorted(g['mag'])} and phase echoes {sorted(g['phase'])} "
                         "(TE s, echo number) do not match", directory)
    order = sorted(g["mag"])
    return [g["mag"][k] for k in order], [g["phase"][k] for k in order]


def sidecar_path(nifti: Path) -> Path:
    nifti = Path(nifti)
    return nifti.with_name(re.sub(NIFTI_RE, ".json", nifti.name))


def read_sidecar(nifti) -> dict:
    """The JSON sidecar of a NIfTI file ({} if there is none)."""
    path = sidecar_path(nifti)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"invalid JSON sidecar ({exc})", path) from exc
    if not isinstance(doc, dict):
        raise InputError("JSON sidecar is not an object", path)
    return doc


def write_gre_bids(gre, out_dir, subject) -> dict:
    """Write ``gre`` (a ``MultiEchoGRE``) as BIDS under ``out_dir``:
    ``sub-<id>/anat/sub-<id>_echo-N_part-mag|phase_MEGRE.nii.gz`` + JSON sidecars.

    Phase is written as float32 radians in [-pi, pi); geometry is the GRE's voxel-to-RAS matrix.
    Every file is written atomically. Returns ``{"mag": [paths], "phase": [paths], "anat": dir}``.
    """
    label = subject_label(subject)
    anat = Path(out_dir) / f"sub-{label}" / "anat"
    te = np.asarray(gre.te_s, float).reshape(-1)
    mag_shape, phase_shape = np.shape(gre.magnitude), np.shape(gre.phase_rad)
    if len(mag_shape) != 4 or mag_shape != phase_shape or te.size != mag_shape[3]:
        raise ValueError(f"write_gre_bids: magnitude {mag_shape}, phase {phase_shape} and {te.size} "
                         "echo times do not describe one (I, J, K, E) acquisition")
    out = {"mag": [], "phase": [], "anat": anat}
    for e in range(gre.n_echoes):
        for part, arr in (("mag", gre.magnitude), ("phase", gre.phase_rad)):
            stem = f"sub-{label}_echo-{e + 1}_part-{part}_MEGRE"
            nii = anat / f"{stem}.nii.gz"
            write_volume(Volume(np.asarray(arr[..., e], np.float32), gre.ras_from_ijk), nii)
            meta = {"EchoTime": float(te[e]), "EchoNumber": e + 1,
                    "MagneticFieldStrength": float(gre.b0_tesla),
                    "EchoTimes": [float(t) for t in te],
                    "B0DirectionIJK": [float(v) for v in np.asarray(gre.b0_dir_ijk, float)],
                    "MRAcquisitionType": "3D", "PulseSequenceType": "Multi-echo gradient echo"}
            if part == "phase":
                meta["Units"] = "rad"
            write_text(sidecar_path(nii), json.dumps(meta, indent=2) + "\n")
            out[part].append(nii)
    return out
