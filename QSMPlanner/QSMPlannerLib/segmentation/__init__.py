"""Segmentation of the STN, SN, RN and of the GPi, GPe on QSM: atlas prior localized and refined by
susceptibility.

Public: ``segment_nuclei`` (both groups), ``segment_pallidum``, ``seeds_to_qsm``, ``NucleiSegmentation``,
``write_seg_nrrd``, ``read_seg_nrrd``, ``write_stats_csv``, ``NAMES`` ({1: "STN_L", ..., 6: "RN_R",
7: "GPi_L", 8: "GPi_R", 9: "GPe_L", 10: "GPe_R"}), ``MIDBRAIN_NAMES``, ``PALLIDUM_NAMES``, ``CIT168_VALUES``.
"""
from .structures import CIT168_VALUES, MIDBRAIN_NAMES, NAMES, PALLIDUM_NAMES  # noqa: F401
from .nuclei import NucleiSegmentation, acpc_coordinates, seeds_to_qsm, segment_nuclei  # noqa: F401
from .io import read_seg_nrrd, write_seg_nrrd, write_stats_csv  # noqa: F401
from .pallidum import segment_pallidum  # noqa: F401
