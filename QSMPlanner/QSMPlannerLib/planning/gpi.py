"""GPi target: the posteroventral (sensorimotor) GPi of the QSM segmentation (direct), with the classic
indirect AC-PC coordinates beside it as a cross-check.

Direct. The posteroventral GPi is the part of the segmented GPi posterior to its centroid along the
AC-PC y axis and inferior to it along z (RAS axes without landmarks). The target is the lowest part of
it that still lies ``GPI_TARGET_DEPTH_MM`` inside the GPi's border (mean of the deep voxels within
``GPI_VENTRAL_BAND_MM`` of the lowest one): as ventral as possible, a few mm above the GPi's ventral
border, below which the optic tract runs (the posteroventral pallidotomy target of Laitinen et al. 1992,
kept above the optic tract). QSM shows the GPi and its border with the GPe (the medial medullary
lamina) directly (segmentation.pallidum; docs/targets.md).

Indirect (cross-check). The classic coordinates from the mid-commissural point (MCP): 20-22 mm lateral,
2-3 mm anterior, 4-6 mm inferior (Laitinen, Bergenheim & Hariz, J Neurosurg 76:53-61, 1992; Starr, Vitek
& Bakay, Neurosurgery 43:989-1013, 1998); the centre of those ranges is used.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import ProcessingError
from ..volume import apply, mask_box
from .kinds import TargetSuggestion, acpc_frame, describe_acpc, estimate
from .target import labelmap_of, side_letter, side_name

GPI_INDIRECT_ACPC_MM = (21.0, 2.5, -5.0)   # lateral, AP (+ anterior), vertical (+ superior) from the MCP
GPI_INDIRECT_TEXT = ("classic indirect GPi coordinates: 20-22 mm lateral, 2-3 mm anterior and 4-6 mm "
                     "inferior to the MCP (centre used; Laitinen et al. 1992, Starr et al. 1998)")
GPI_TARGET_DEPTH_MM = 2.0    # from the target to the GPi's border (voxel faces)
GPI_VENTRAL_BAND_MM = 1.0


def gpi_indirect_acpc(side) -> np.ndarray:
    """Signed AC-PC mm (+x right) of the classic indirect GPi target of ``side``."""
    lat, ap, vert = GPI_INDIRECT_ACPC_MM
    return np.array([lat if side_name(side) == "right" else -lat, ap, vert])


def posteroventral(coords_acpc: np.ndarray) -> np.ndarray:
    """Which of a structure's voxels (their AC-PC or RAS coordinates, (N, 3)) lie in its posteroventral
    part: posterior to its centroid along y and inferior to it along z."""
    c = np.asarray(coords_acpc, float)
    tie = 1e-6      # voxels on the centroid's plane count, whatever the rounding of a moved frame
    return (c[:, 1] <= c[:, 1].mean() + tie) & (c[:, 2] <= c[:, 2].mean() + tie)


def _gpi_value(side) -> int:
    from ..segmentation.structures import VALUES
    return VALUES[f"GPi_{side_letter(side)}"]


def suggest_gpi(seg, side, landmarks=None, world_from_segmentation=None,
                depth_mm: float = GPI_TARGET_DEPTH_MM) -> TargetSuggestion:
    """GPi target of ``side`` (module docstring) in world RAS mm; with ``landmarks`` (world RAS) the AC-PC
    axes and the indirect cross-check. ``seg``: segmentation or label map (GPi_L 7, GPi_R 8) placed in the
    world by ``world_from_segmentation``. details: depth_mm (target to the GPi's border), ventral_clearance_mm
    (target down to the GPi's ventral border along -z), posteroventral_voxels, gpi_volume_mm3."""
    name = side_name(side)
    lab = labelmap_of(seg)
    value = _gpi_value(name)
    mask = np.asarray(lab.data) == value
    if not mask.any():
        raise ProcessingError(f"the segmentation has no GPi_{side_letter(name)} (label {value}) voxels")
    w = np.eye(4) if world_from_segmentation is None else np.asarray(world_from_segmentation, float)
    world_from_ijk = w @ lab.ras_from_ijk
    frame = acpc_frame(landmarks)
    axes = frame if frame is not None else np.eye(4)
    ijk = np.argwhere(mask)
    ras = apply(world_from_ijk, ijk)
    c = apply(axes, ras)
    pv = posteroventral(c)
    # depth: distance from a voxel centre to the nearest voxel face of the border (on the GPi's box)
    box = mask_box(mask, 2)
    edt = ndimage.distance_transform_edt(mask[box], sampling=lab.voxel_mm)[mask[box]]
    depth = edt - 0.5 * float(np.mean(lab.voxel_mm))
    need = min(float(depth_mm), float(depth[pv].max()))
    deep = pv & (depth >= need - 1e-6)
    band = deep & (c[:, 2] <= c[deep, 2].min() + GPI_VENTRAL_BAND_MM + 1e-6)
    target = ras[band].mean(axis=0)
    k = int(np.argmin(np.where(deep, np.linalg.norm(ras - target, axis=1), np.inf)))
    if np.linalg.norm(ras[k] - target) > 0.5 * float(np.min(lab.voxel_mm)):
        target = ras[k]              # the band's mean left the deep voxels (a curved band): snap
    down = -np.linalg.inv(axes)[:3, 2] if frame is not None else np.array([0.0, 0.0, -1.0])
    clearance = _run_length(mask, np.linalg.inv(world_from_ijk), target, down)
    t_depth = float(depth[int(np.argmin(np.linalg.norm(ras - target, axis=1)))])   # its voxel's depth
    details = {"depth_mm": round(t_depth, 2), "ventral_clearance_mm": round(clearance, 2),
               "posteroventral_voxels": int(pv.sum()),
               "gpi_volume_mm3": round(float(mask.sum() * abs(np.linalg.det(lab.ras_from_ijk[:3, :3]))), 1),
               "axes": "AC-PC" if frame is not None else "RAS (no landmarks)"}
    direct = estimate("direct", "posteroventral GPi of the QSM segmentation", target, frame)
    indirect = None
    if frame is not None:
        indirect = estimate("indirect", GPI_INDIRECT_TEXT, apply(np.linalg.inv(frame), gpi_indirect_acpc(name)),
                            frame)
    out = TargetSuggestion("gpi", name, direct, indirect, details)
    where = (f"AC-PC {describe_acpc(direct.acpc)}" if direct.acpc is not None
             else f"RAS ({', '.join(f'{v:.1f}' for v in target)}) mm")
    text = (f"{name.capitalize()} GPi target (direct: posteroventral GPi on the QSM segmentation, "
            f"{t_depth:.1f} mm inside its border, {clearance:.1f} mm above its ventral border, beneath which "
            f"the optic tract runs) at {where}")
    if indirect is not None:
        d = out.difference["vector_mm"]
        sign = 1.0 if name == "right" else -1.0
        text += (f"; the classic indirect target ({describe_acpc(indirect.acpc)}) lies "
                 f"{out.difference['distance_mm']:.1f} mm away (lateral {sign * d[0]:+.1f}, AP {d[1]:+.1f}, "
                 f"vertical {d[2]:+.1f} mm)")
    else:
        text += "; no AC-PC landmarks: no indirect cross-check"
    out.statement = text + "."
    return out


def _run_length(mask: np.ndarray, ijk_from_world: np.ndarray, start, direction, step_mm: float = 0.1,
                max_mm: float = 30.0) -> float:
    """Distance (mm) from ``start`` along ``direction`` (world) until the nearest voxel leaves ``mask``."""
    s = np.arange(0.0, max_mm, step_mm)
    pts = np.asarray(start, float) + s[:, None] * np.asarray(direction, float)
    ijk = np.rint(apply(ijk_from_world, pts)).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(mask.shape)), axis=1)
    inside = np.zeros(len(s), bool)
    inside[ok] = mask[tuple(ijk[ok].T)]
    out = np.nonzero(~inside)[0]
    return float(s[out[0]]) if len(out) else float(max_mm)
