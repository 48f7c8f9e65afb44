"""Stereotactic frame space (Leksell model G).

Leksell XYZ mm: +X patient's left, +Y anterior, +Z inferior, frame centre (100, 100, 100).
Image/world coordinates are RAS mm; ``xyz_from_ras`` (4x4) maps image RAS to Leksell XYZ.
"""
from .coordinates import (MOUNTINGS, RingArc, acpc_coordinates, acpc_from_ras, acpc_readout,
                          direction_from_ring_arc, mer_axes_xyz, mer_tracks, ring_arc,
                          trajectory_from_ring_arc)
from .geometry import (FRAMERAS_FROM_XYZ, PLATES, XYZ_FROM_FRAMERAS, ras_to_lps, ras_to_xyz,
                       xyz_to_ras)
from .plan import plan_to_dict
from .registration import (FrameRegistration, clicks_from_points, detect_triplets, fit_triplets, predicted_tre_mm,
                           register_frame, register_frame_manual, rigid_fit)
from .synthetic import analytic_triplets, render_localizer_ct

__all__ = ["FRAMERAS_FROM_XYZ", "XYZ_FROM_FRAMERAS", "PLATES", "MOUNTINGS", "RingArc",
           "ras_to_xyz", "xyz_to_ras", "ras_to_lps", "ring_arc", "trajectory_from_ring_arc",
           "direction_from_ring_arc", "acpc_coordinates", "acpc_from_ras", "acpc_readout",
           "mer_tracks", "mer_axes_xyz", "plan_to_dict", "render_localizer_ct", "analytic_triplets",
           "FrameRegistration", "register_frame", "register_frame_manual", "detect_triplets",
           "fit_triplets", "predicted_tre_mm", "rigid_fit", "clicks_from_points"]
