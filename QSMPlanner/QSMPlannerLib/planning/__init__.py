"""Trajectory planning: STN target suggestion, risk structures (veins from QSM, ventricles, sulci),
safe-entry search, electrode models and probe's-eye views. World coordinates are RAS mm.
"""
from .electrodes import (ELECTRODES, Contact, ElectrodeModel, ElectrodePlacement, electrode_model,
                         electrode_polydata, place_electrode)
from .risk import RiskMap, csf_structures
from .target import NUCLEI_VALUES, acpc_axes, side_letter, side_name, suggest_target
from .trajectory import (Admissible, EntrySearch, Instruments, TrajectoryScore, angles_from_direction,
                         direction_from_angles, score_trajectory, search_entries, standard_trajectory)
from .vessels import r2star_map, vessel_mask, vesselness
from .views import Reslice, inline_views, probe_eye_view, reslice

__all__ = ["RiskMap", "csf_structures", "NUCLEI_VALUES", "acpc_axes", "side_letter", "side_name",
           "suggest_target", "Admissible", "EntrySearch", "Instruments", "TrajectoryScore",
           "angles_from_direction", "direction_from_angles", "score_trajectory", "search_entries",
           "standard_trajectory", "vessel_mask", "vesselness", "r2star_map", "ELECTRODES", "Contact", "ElectrodeModel",
           "ElectrodePlacement", "electrode_model", "electrode_polydata", "place_electrode", "Reslice",
           "inline_views", "probe_eye_view", "reslice"]
