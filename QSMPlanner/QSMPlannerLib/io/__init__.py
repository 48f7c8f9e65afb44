"""Data I/O at the file boundaries: volumes, multi-echo GRE (BIDS, NIfTI, DICOM), markups, transforms."""
from .atomic import atomic_dir, atomic_path, write_text
from .volumes import read_volume, write_volume

__all__ = ["atomic_dir", "atomic_path", "write_text", "read_volume", "write_volume"]
