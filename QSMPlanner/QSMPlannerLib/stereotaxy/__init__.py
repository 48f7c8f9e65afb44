"""Stereotactic frame space: Leksell G, CRW and BRW frames, their N-localizers and coordinates.

Image/world coordinates are RAS mm. A ``FrameRegistration`` carries the frame system, ``frame_from_ras``
(image RAS -> frame RAS) and ``xyz_from_ras`` (image RAS -> the system's native coordinates: Leksell XYZ,
or CRW/BRW LAT, AP, VERT).
"""
from .coordinates import (MOUNTINGS, RingArc, acpc_coordinates, acpc_from_ras, acpc_readout,
                          direction_from_ring_arc, mer_axes_xyz, mer_tracks, ring_arc,
                          trajectory_from_ring_arc)
from .frames import SYSTEMS, FrameSystem, get_system
from .geometry import (FRAMERAS_FROM_XYZ, PLATES, XYZ_FROM_FRAMERAS, ras_to_lps, ras_to_xyz,
                       xyz_to_ras)
from .plan import frame_readout, plan_to_dict
from .registration import (FrameRegistration, clicks_from_points, fit_candidates, predicted_tre_mm,
                           register_frame, register_frame_manual, rigid_fit)
from .synthetic import (Clutter, analytic_candidates, frame_ct_grid, frame_pose, render_frame_ct,
                        render_localizer_ct)

__all__ = ["FRAMERAS_FROM_XYZ", "XYZ_FROM_FRAMERAS", "PLATES", "MOUNTINGS", "RingArc", "SYSTEMS", "FrameSystem",
           "get_system", "ras_to_xyz", "xyz_to_ras", "ras_to_lps", "ring_arc", "trajectory_from_ring_arc",
           "direction_from_ring_arc", "acpc_coordinates", "acpc_from_ras", "acpc_readout",
           "mer_tracks", "mer_axes_xyz", "plan_to_dict", "frame_readout", "render_localizer_ct",
           "render_frame_ct", "Clutter", "frame_pose", "frame_ct_grid", "analytic_candidates",
           "FrameRegistration", "register_frame", "register_frame_manual", "fit_candidates",
           "predicted_tre_mm", "rigid_fit", "clicks_from_points"]
