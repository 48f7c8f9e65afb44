"""Trajectory planning: target suggestion per kind (STN, GPi, VIM; ``TARGET_KINDS``, ``suggest_target_of_kind``),
risk structures (veins from QSM, ventricles, sulci), safe-entry search, electrode models and probe's-eye
views. World coordinates are RAS mm.
"""
from .electrodes import (ELECTRODES, Contact, ElectrodeModel, ElectrodePlacement, electrode_model,
                         electrode_polydata, place_electrode)
from .gpi import posteroventral, suggest_gpi
from .kinds import (TARGET_KINDS, Estimate, TargetSuggestion, check_target_kind, suggest_target_of_kind)
from .risk import RiskMap, csf_structures
from .target import NUCLEI_VALUES, acpc_axes, side_letter, side_name, suggest_stn, suggest_target
from .trajectory import (Admissible, EntrySearch, Instruments, TrajectoryScore, angles_from_direction,
                         direction_from_angles, score_trajectory, search_entries, standard_trajectory)
from .vessels import r2star_map, vessel_mask, vesselness
from .views import Reslice, inline_views, probe_eye_view, reslice
from .vim import ThirdVentricle, measure_third_ventricle, suggest_vim, vim_acpc

__all__ = ["TARGET_KINDS", "Estimate", "TargetSuggestion", "check_target_kind", "suggest_target_of_kind",
           "suggest_stn", "suggest_gpi", "posteroventral", "suggest_vim", "vim_acpc", "ThirdVentricle",
           "measure_third_ventricle", "RiskMap", "csf_structures", "NUCLEI_VALUES", "acpc_axes", "side_letter",
           "side_name", "suggest_target", "Admissible", "EntrySearch", "Instruments", "TrajectoryScore",
           "angles_from_direction", "direction_from_angles", "score_trajectory", "search_entries",
           "standard_trajectory", "vessel_mask", "vesselness", "r2star_map", "ELECTRODES", "Contact", "ElectrodeModel",
           "ElectrodePlacement", "electrode_model", "electrode_polydata", "place_electrode", "Reslice",
           "inline_views", "probe_eye_view", "reslice"]
