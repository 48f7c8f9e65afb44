"""Data I/O at the file boundaries: volumes, multi-echo GRE (BIDS, NIfTI, DICOM via dcm2niix), field-map
inputs, markups.

World = RAS mm (Slicer); LPS appears only inside file readers/writers (ITK, DICOM, LPS markups).
"""
from . import bids, markups
from .atomic import atomic_dir, atomic_path, write_text
from .bids import find_ct, find_t1, write_gre_bids
from .dicom_series import DicomEchoInfo, dicom_echo_info
from .fieldmap import FieldInput, read_field_input
from .gre import MultiEchoGRE, b0_dir_from_geometry
from .loaders import add_gre_arguments, gre_from_args, gre_from_echo_volumes, load_gre
from .markups import read_points, write_points
from .volumes import read_volume, write_volume

__all__ = ["atomic_dir", "atomic_path", "write_text", "read_volume", "write_volume", "bids", "markups",
           "find_t1", "find_ct", "write_gre_bids", "MultiEchoGRE", "b0_dir_from_geometry",
           "read_points", "write_points", "load_gre", "add_gre_arguments", "gre_from_args",
           "DicomEchoInfo", "dicom_echo_info", "gre_from_echo_volumes", "FieldInput", "read_field_input"]
