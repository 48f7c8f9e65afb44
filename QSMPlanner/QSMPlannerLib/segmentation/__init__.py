"""Segmentation of the STN, SN and RN on QSM: atlas prior localized and refined by susceptibility.

Public: ``segment_nuclei``, ``seeds_to_qsm``, ``NucleiSegmentation``, ``write_seg_nrrd``, ``read_seg_nrrd``,
``write_stats_csv``, ``NAMES`` ({1: "STN_L", ..., 6: "RN_R"}), ``CIT168_VALUES``.
"""
from .structures import CIT168_VALUES, NAMES  # noqa: F401
from .nuclei import NucleiSegmentation, acpc_coordinates, seeds_to_qsm, segment_nuclei  # noqa: F401
from .io import read_seg_nrrd, write_seg_nrrd, write_stats_csv  # noqa: F401
