"""Stereotactic frame space (Leksell model G).

Leksell XYZ mm: +X patient's left, +Y anterior, +Z inferior, frame centre (100, 100, 100).
Image/world coordinates are RAS mm; ``xyz_from_ras`` (4x4) maps image RAS to Leksell XYZ.
"""
from .geometry import (FRAMERAS_FROM_XYZ, PLATES, XYZ_FROM_FRAMERAS, ras_to_lps, ras_to_xyz,
                       xyz_to_ras)
from .synthetic import render_localizer_ct

__all__ = ["FRAMERAS_FROM_XYZ", "XYZ_FROM_FRAMERAS", "PLATES", "ras_to_xyz", "xyz_to_ras",
           "ras_to_lps", "render_localizer_ct"]
