"""DICOM series: planning volumes (T1/CT) and multi-echo GRE (Siemens, GE, Philips)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def _dicom_files(directory: Path) -> list[Path]:
    out = []
    for p in sorted(Path(directory).rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        try:
            with open(p, "rb") as fh:
                head = fh.read(132)
        except OSError:
            continue
        if len(head) == 132 and head[128:132] == b"DICM":
            out.append(p)
        elif p.suffix.lower() in (".dcm", ".ima"):
            out.append(p)
    return out


def has_dicom(directory) -> bool:
    return bool(_dicom_files(Path(directory)))


def load_dicom_gre(mag_dirs, phase_dirs, te=None, b0=None, b0_dir=None):
    raise InputError("DICOM multi-echo GRE reading is not available yet", mag_dirs[0])


def read_dicom_volume(directory):
    raise InputError("DICOM volume reading is not available yet", directory)
