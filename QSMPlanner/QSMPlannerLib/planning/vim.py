"""VIM target (ventral intermediate nucleus of the thalamus; essential tremor): indirect, from AC-PC.

The VIM is not visible on QSM (nor on T1 or T2 at 3 T): it is planned from the commissures and the
third ventricle. Formula, in AC-PC coordinates (mm from the mid-commissural point, MCP; L = |AC - PC|):

    AP       = -L/2 + L/4 = -L/4     one quarter of the AC-PC length anterior to the PC
    lateral  = wall + 11 mm          11 mm lateral to the side's wall of the third ventricle
    vertical = 0                     on the AC-PC plane

This is the usual indirect VIM target of thalamotomy and VIM stimulation ("25 % of the AC-PC length
anterior to the PC, 11 mm lateral to the third ventricle's wall (or 14 mm from the midline), on the
intercommissural plane": e.g. Elias et al., N Engl J Med 369:640-648, 2013; the centres surveyed by
Jameel et al., Front Neurol 15:1345873, 2024, doi:10.3389/fneur.2024.1345873, mostly target from these
landmarks). The wall term makes the lateral coordinate follow the ventricle's width, which the VIM's
physiological position does (Maeda, Yokochi & Narabayashi, No Shinkei Geka 16:1045-1052, 1988: kinesthetic
VIM neurons 14.0 mm from the midline with ventricles < 4 mm, 16.9 mm with ventricles > 10 mm; J Clin
Neurosci 68:97-100, 2019, doi:10.1016/j.jocn.2019.07.027). The fixed variant, 14 mm from the midline, is
reported beside it as a cross-check.

Worked example (``test_targets_vim``): L = 24 mm, walls at x = -3 and +3 mm (width 6 mm) give the right
VIM at (+14.0, -6.0, 0.0) and the left at (-14.0, -6.0, 0.0) AC-PC mm.

The wall is measured on the T1 (``measure_third_ventricle``: CSF is dark between the bright thalami on
the AC-PC plane at the VIM's AP level) or given as the ventricle's width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import InputError, ProcessingError
from ..volume import Volume, apply
from .kinds import TargetSuggestion, acpc_frame, describe_acpc, estimate
from .target import side_name

VIM_AP_FRACTION = 0.25          # of the AC-PC length, anterior to the PC
VIM_WALL_OFFSET_MM = 11.0       # lateral to the third ventricle's wall
VIM_MIDLINE_LATERAL_MM = 14.0   # the fixed variant (from the mid-sagittal plane)
VIM_VERTICAL_MM = 0.0           # on the AC-PC plane
VIM_FORMULA_TEXT = ("indirect VIM: 25% of the AC-PC length anterior to the PC, 11 mm lateral to the third "
                    "ventricle's wall, on the AC-PC plane (Elias et al. 2013; Jameel et al. 2024)")
VIM_MIDLINE_TEXT = "indirect VIM, fixed variant: 25% of the AC-PC length anterior to the PC, 14 mm from the midline"
MIN_VENTRICLE_CONTRAST = 0.25   # (thalamus - CSF) / thalamus on the T1 profile


@dataclass
class ThirdVentricle:
    """The third ventricle's walls where they cross the AC-PC x axis: signed AC-PC x (mm, + right) at AC-PC
    y ``ap_mm`` and z ``vertical_mm``. ``source``: how they were found; ``contrast``: (thalamus - CSF) /
    thalamus of the T1 profile when measured."""
    left_wall_x_mm: float
    right_wall_x_mm: float
    ap_mm: float = 0.0
    vertical_mm: float = 0.0
    source: str = "given width, walls symmetric about the mid-sagittal plane"
    contrast: float | None = None

    @property
    def width_mm(self) -> float:
        return float(self.right_wall_x_mm - self.left_wall_x_mm)

    def wall_x_mm(self, side) -> float:
        return float(self.right_wall_x_mm if side_name(side) == "right" else self.left_wall_x_mm)

    @classmethod
    def from_width(cls, width_mm: float) -> "ThirdVentricle":
        w = float(width_mm)
        if not (np.isfinite(w) and 0.0 < w < 30.0):
            raise InputError(f"third ventricle width must be between 0 and 30 mm, got {width_mm!r}")
        return cls(-w / 2.0, w / 2.0)

    def to_dict(self) -> dict:
        return {"left_wall_x_ACPC_mm": round(self.left_wall_x_mm, 3),
                "right_wall_x_ACPC_mm": round(self.right_wall_x_mm, 3), "width_mm": round(self.width_mm, 3),
                "ap_ACPC_mm": round(self.ap_mm, 3), "vertical_ACPC_mm": round(self.vertical_mm, 3),
                "source": self.source, "contrast": None if self.contrast is None else round(self.contrast, 3)}


def vim_ap_mm(acpc_length_mm: float) -> float:
    """AC-PC y (mm, + anterior of the MCP) of the VIM: a quarter of the AC-PC length anterior to the PC."""
    return (VIM_AP_FRACTION - 0.5) * float(acpc_length_mm)


def vim_acpc(side, acpc_length_mm: float, wall_x_mm: float | None = None) -> np.ndarray:
    """Signed AC-PC mm (+x right) of the indirect VIM of ``side``: 11 mm beyond the side's wall (signed
    AC-PC x ``wall_x_mm``), or 14 mm from the midline when ``wall_x_mm`` is None (fixed variant)."""
    sign = 1.0 if side_name(side) == "right" else -1.0
    x = sign * VIM_MIDLINE_LATERAL_MM if wall_x_mm is None else float(wall_x_mm) + sign * VIM_WALL_OFFSET_MM
    return np.array([x, vim_ap_mm(acpc_length_mm), VIM_VERTICAL_MM])


def _acpc_length(landmarks) -> float:
    return float(np.linalg.norm(np.asarray(landmarks["AC"], float) - np.asarray(landmarks["PC"], float)))


def suggest_vim(side, landmarks, third_ventricle=None) -> TargetSuggestion:
    """The indirect VIM of ``side`` (module docstring) in world RAS mm (the landmarks' space).
    ``third_ventricle``: a ``ThirdVentricle``, its width (mm; symmetric walls), or None (then the fixed
    14 mm variant is the target and no cross-check is given). details: acpc_length_mm and the walls."""
    name = side_name(side)
    frame = acpc_frame(landmarks)
    if frame is None:
        raise InputError("a VIM target needs the AC, PC and MS landmarks")
    ras_from_acpc = np.linalg.inv(frame)
    length = _acpc_length(landmarks)
    midline = estimate("indirect", VIM_MIDLINE_TEXT, apply(ras_from_acpc, vim_acpc(name, length)), frame)
    details = {"acpc_length_mm": round(length, 3)}
    if third_ventricle is None:
        out = TargetSuggestion("vim", name, midline, None, details)
        out.statement = (f"{name.capitalize()} VIM target (indirect, fixed variant: 25% of the AC-PC length "
                         f"({length:.1f} mm) anterior to the PC, 14 mm from the midline, on the AC-PC plane; the "
                         f"third ventricle was not measured) at AC-PC {describe_acpc(midline.acpc)}.")
        return out
    tv = third_ventricle if isinstance(third_ventricle, ThirdVentricle) else ThirdVentricle.from_width(third_ventricle)
    wall = tv.wall_x_mm(name)
    target = estimate("indirect", VIM_FORMULA_TEXT, apply(ras_from_acpc, vim_acpc(name, length, wall)), frame)
    details["third_ventricle"] = tv.to_dict()
    out = TargetSuggestion("vim", name, target, midline, details)
    out.statement = (f"{name.capitalize()} VIM target (indirect: 25% of the AC-PC length ({length:.1f} mm) "
                     f"anterior to the PC, 11 mm lateral to the third ventricle's wall ({abs(wall):.1f} mm from "
                     f"the midline; width {tv.width_mm:.1f} mm), on the AC-PC plane) at AC-PC "
                     f"{describe_acpc(target.acpc)}; the fixed 14 mm variant differs by "
                     f"{out.difference['distance_mm']:.1f} mm.")
    return out


def measure_third_ventricle(t1: Volume, landmarks, ap_mm: float | None = None, half_length_mm: float = 2.0,
                            half_height_mm: float = 1.0, search_mm: float = 20.0,
                            step_mm: float = 0.1) -> ThirdVentricle:
    """The third ventricle's walls on a T1 (CSF dark between the thalami), where they cross the AC-PC x
    axis on the AC-PC plane at AC-PC y ``ap_mm`` (default: the VIM's level, a quarter of the AC-PC length
    anterior to the PC). ``t1`` and ``landmarks`` ({"AC", "PC", "MS"}) share one RAS space.

    The T1 is sampled (trilinear) along the AC-PC x axis every ``step_mm`` over +-``search_mm`` on lines
    0.5 mm apart within +-``half_length_mm`` in y and +-``half_height_mm`` in z; the median over the lines
    is the profile. Each wall is where the profile crosses half-way between the CSF minimum and the
    thalamus beside that wall (median 1.5-5 mm beyond it; two passes), interpolated between samples: the
    boundary of a partial-volume edge. Ventricles narrower than about two voxels do not reach the CSF level
    and come out too wide. ProcessingError when no ventricle stands out (contrast below
    ``MIN_VENTRICLE_CONTRAST``) or a wall is not found."""
    frame = acpc_frame(landmarks)
    if frame is None:
        raise InputError("measuring the third ventricle needs the AC, PC and MS landmarks")
    if np.asarray(t1.data).ndim != 3:
        raise InputError(f"the T1 must be 3-D, got shape {np.asarray(t1.data).shape}", t1.name or None)
    ap = vim_ap_mm(_acpc_length(landmarks)) if ap_mm is None else float(ap_mm)
    xs = np.arange(-search_mm, search_mm + step_mm / 2, step_mm)
    ys = ap + np.arange(-half_length_mm, half_length_mm + 1e-9, 0.5)
    zs = np.arange(-half_height_mm, half_height_mm + 1e-9, 0.5)
    yy, zz, xx = np.meshgrid(ys, zs, xs, indexing="ij")
    acpc = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
    ijk = apply(t1.ijk_from_ras @ np.linalg.inv(frame), acpc)
    values = ndimage.map_coordinates(np.asarray(t1.data, np.float32), ijk.T, order=1, mode="nearest")
    profile = np.median(values.reshape(-1, len(xs)), axis=0)
    left, right, contrast = _walls(xs, profile)
    return ThirdVentricle(left, right, ap, 0.0, "T1 profile on the AC-PC plane", contrast)


def _walls(xs: np.ndarray, profile: np.ndarray) -> tuple[float, float, float]:
    """(left wall x, right wall x, contrast) of the dark trough nearest the midline of ``profile``."""
    inner = np.abs(xs) <= 10.0
    i0 = int(np.argmin(np.where(inner, profile, np.inf)))
    csf = float(profile[i0])
    x0 = xs[i0]
    tissue = {s: float(np.median(profile[(s * (xs - x0) >= 8.0) & (s * (xs - x0) <= 14.0)])) for s in (-1, 1)}
    walls = {}
    for _ in range(2):
        for s in (-1, 1):
            half = (csf + tissue[s]) / 2.0
            idx = np.arange(i0, len(xs)) if s > 0 else np.arange(i0, -1, -1)
            above = np.nonzero(profile[idx] >= half)[0]
            if len(above) == 0:
                raise ProcessingError(f"no {'right' if s > 0 else 'left'} wall of the third ventricle on the T1")
            j, jp = idx[above[0]], idx[above[0] - 1]
            f = (half - profile[jp]) / max(profile[j] - profile[jp], 1e-12)
            walls[s] = float(xs[jp] + f * (xs[j] - xs[jp]))
            beyond = (s * (xs - walls[s]) >= 1.5) & (s * (xs - walls[s]) <= 5.0)
            if beyond.any():
                tissue[s] = float(np.median(profile[beyond]))
    contrast = (min(tissue.values()) - csf) / max(min(tissue.values()), 1e-12)
    if contrast < MIN_VENTRICLE_CONTRAST:
        raise ProcessingError(f"no third ventricle on the T1 at the AC-PC plane (contrast {contrast:.2f} < "
                              f"{MIN_VENTRICLE_CONTRAST})")
    return walls[-1], walls[1], float(contrast)
