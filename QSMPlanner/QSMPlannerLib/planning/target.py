"""STN target suggestion (dorsolateral, motor part) from a nuclei label map.

Label values follow ``segmentation.NucleiSegmentation``: 1..6 = STN_L, STN_R, SN_L, SN_R, RN_L, RN_R.
All points are RAS mm in the label map's own space (its ``ras_from_ijk``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InputError, ProcessingError
from ..volume import Volume

NUCLEI_VALUES = {"STN_L": 1, "STN_R": 2, "SN_L": 3, "SN_R": 4, "RN_L": 5, "RN_R": 6}


def side_name(side) -> str:
    """'left'/'right' from 'left', 'L', 'l', 'STN_L', 'right', 'R', ..."""
    s = str(side).strip().lower()
    if s in ("left", "l", "stn_l", "lh"):
        return "left"
    if s in ("right", "r", "stn_r", "rh"):
        return "right"
    raise InputError(f"side must be 'left' or 'right', got {side!r}")


def side_letter(side) -> str:
    return "L" if side_name(side) == "left" else "R"


def outward_sign(side) -> float:
    """+1 for the right side (lateral = +R), -1 for the left side (lateral = -R)."""
    return -1.0 if side_name(side) == "left" else 1.0


def labelmap_of(seg) -> Volume:
    """The label map Volume of a NucleiSegmentation-like object, a dict {'labelmap': ...} or a Volume."""
    if isinstance(seg, Volume):
        return seg
    if isinstance(seg, dict) and "labelmap" in seg:
        return seg["labelmap"]
    lab = getattr(seg, "labelmap", None)
    if isinstance(lab, Volume):
        return lab
    raise InputError("expected a segmentation (with .labelmap) or a label map Volume")


def acpc_axes(landmarks=None) -> tuple[np.ndarray, np.ndarray]:
    """(axes 3x3 with rows x=right, y=anterior, z=superior as RAS unit vectors, origin = MCP RAS mm).

    From AC, PC, MS (mid-sagittal point) when given (stereotaxy.md convention), else the RAS axes and
    the origin (0, 0, 0)."""
    if landmarks and all(k in landmarks for k in ("AC", "PC", "MS")):
        from ..stereotaxy.coordinates import acpc_from_ras
        ac, pc, ms = (np.asarray(landmarks[k], float) for k in ("AC", "PC", "MS"))
        return acpc_from_ras(ac, pc, ms)[:3, :3], (ac + pc) / 2.0
    return np.eye(3), np.zeros(3)


def suggest_target(seg, side, landmarks=None, fraction: float = 1.0 / 3.0,
                   dorsolateral_weights=(1.0, -0.5, 1.0)) -> np.ndarray:
    """Suggested DBS target (RAS mm, label map space) in the dorsolateral (motor) STN of ``side``.

    The STN voxels are projected on a dorsolateral axis (lateral, slightly posterior, superior; weights
    ``dorsolateral_weights`` on the AC-PC axes x-outward, y, z — RAS axes without ``landmarks``); the target
    is the centroid of the top ``fraction`` of them, moved to the nearest interior STN voxel if that
    centroid falls outside the nucleus. The surgeon may override it."""
    lab = labelmap_of(seg)
    name = side_name(side)
    value = NUCLEI_VALUES["STN_L" if name == "left" else "STN_R"]
    data = np.asarray(lab.data)
    stn = data == value
    if not stn.any():
        raise ProcessingError(f"the segmentation has no {'STN_L' if name == 'left' else 'STN_R'} "
                              f"(label {value}) voxels")
    ijk = np.argwhere(stn).astype(float)
    pts = lab.ijk_to_ras(ijk)
    axes, _ = acpc_axes(landmarks)
    w = np.asarray(dorsolateral_weights, float)
    d = outward_sign(name) * w[0] * axes[0] + w[1] * axes[1] + w[2] * axes[2]
    d /= np.linalg.norm(d)
    proj = (pts - pts.mean(axis=0)) @ d
    cut = np.quantile(proj, 1.0 - float(fraction)) if len(proj) > 3 else proj.min()
    target = pts[proj >= cut].mean(axis=0)
    # keep it inside the nucleus (away from its border when possible)
    t_ijk = np.rint(lab.ras_to_ijk(target)).astype(int)
    inside = np.all((t_ijk >= 0) & (t_ijk < np.array(stn.shape))) and stn[tuple(t_ijk)]
    if not inside:
        depth = ndimage.distance_transform_edt(stn, sampling=lab.voxel_mm)
        interior = depth >= min(depth.max(), 1.0)
        cand = np.argwhere(interior & stn)
        cand_ras = lab.ijk_to_ras(cand.astype(float))
        target = cand_ras[np.argmin(np.linalg.norm(cand_ras - target, axis=1))]
    return np.asarray(target, float)


def suggest_stn(seg, side, landmarks=None, world_from_segmentation=None):
    """``suggest_target`` (dorsolateral STN, RAS axes: the numbers ``plan.plan_both_sides`` uses) moved
    to the world by ``world_from_segmentation``, as a ``kinds.TargetSuggestion`` (no cross-check);
    ``landmarks`` (world RAS) add the AC-PC coordinates."""
    from .kinds import TargetSuggestion, acpc_frame, describe_acpc, estimate
    name = side_name(side)
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    target = w[:3, :3] @ suggest_target(seg, name) + w[:3, 3]
    frame = acpc_frame(landmarks)
    est = estimate("direct", "dorsolateral (motor) STN of the QSM segmentation", target, frame)
    where = (f"at AC-PC {describe_acpc(est.acpc)}" if est.acpc is not None
             else f"at RAS ({', '.join(f'{v:.1f}' for v in target)}) mm")
    return TargetSuggestion("stn", name, est, None, {},
                            f"{name.capitalize()} STN target (direct: dorsolateral STN on the QSM segmentation) "
                            f"{where}.")
