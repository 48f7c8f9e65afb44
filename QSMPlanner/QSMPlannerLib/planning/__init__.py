"""Trajectory planning: STN target suggestion, risk structures (veins from QSM, ventricles, sulci),
safe-entry search, electrode models and probe's-eye views. World coordinates are RAS mm.
"""
from .risk import RiskMap, csf_structures
from .target import NUCLEI_VALUES, acpc_axes, side_letter, side_name, suggest_target
from .trajectory import (Admissible, EntrySearch, Instruments, TrajectoryScore, angles_from_direction,
                         direction_from_angles, score_trajectory, search_entries, standard_trajectory)
from .vessels import vessel_mask, vesselness

__all__ = ["RiskMap", "csf_structures", "NUCLEI_VALUES", "acpc_axes", "side_letter", "side_name",
           "suggest_target", "Admissible", "EntrySearch", "Instruments", "TrajectoryScore",
           "angles_from_direction", "direction_from_angles", "score_trajectory", "search_entries",
           "standard_trajectory", "vessel_mask", "vesselness"]
