"""Pictures of a plan for the README: an oblique slice along the trajectory (QSM, nuclei, trajectory,
electrode) and a 3-D view (nuclei surfaces, electrodes, markups), drawn offscreen by Slicer's displayable
managers.

    python -m QSMPlannerLib.scene.screenshots OUT_DIR [--seed 0] [--full]

builds the digital patient, runs the whole panel flow on it (``flow.run_whole_flow``: QSM from the GRE,
registrations, nuclei on the QSM, ranked safe entries, frame), and writes ``screenshot_slice.png`` (an
oblique slice along the left trajectory: QSM, nuclei outlines, trajectories, electrodes) and
``screenshot_3d.png`` (nuclei surfaces, electrodes, markups) into OUT_DIR. Without the phantom package (``--atlas``), an atlas-based χ map stands in: the MNI ICBM152 grey
and white matter maps and the CIT168 nuclei with literature-like χ values (a picture, not a patient).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..volume import Volume
from . import mrml, render
from .logic import NUCLEI_NAME, TRUTH_NAME, PlannerLogic


def trajectory_plane(target_ras, entry_ras):
    """(normal, transverse) of the plane holding the trajectory and the R axis (a tilted coronal cut)."""
    d = np.asarray(entry_ras, float) - np.asarray(target_ras, float)
    d /= np.linalg.norm(d)
    normal = np.cross(d, [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    if normal[1] < 0:
        normal = -normal
    return normal, np.array([-1.0, 0.0, 0.0])  # patient left on the picture's right, as in Slicer


# Illustrative χ (ppm) per CIT168 label (left values; right = left + 100) for the atlas picture.
ATLAS_CHI_PPM = {1: 0.05, 2: 0.04, 5: 0.16, 6: 0.13, 7: 0.14, 8: 0.10, 9: 0.15, 16: 0.10}


def atlas_chi_volumes(crop_ras=((-75.0, 75.0), (-80.0, 60.0), (-45.0, 75.0))):
    """(χ Volume, nuclei labelmap Volume with values 1..6 = STN_L, STN_R, SN_L, SN_R, RN_L, RN_R, brain mask)
    on the MNI 1 mm grid cropped to ``crop_ras`` — from the shipped atlases only."""
    from scipy import ndimage
    from .. import ATLAS_DIR
    from ..io.volumes import read_volume
    t1 = read_volume(ATLAS_DIR / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    gm = read_volume(ATLAS_DIR / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").data.astype(np.float32)
    wm = read_volume(ATLAS_DIR / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").data.astype(np.float32)
    cit = read_volume(ATLAS_DIR / "CIT168_subcortex.nii.gz")
    # CIT168 labels onto the template grid (both 1 mm, axis-aligned; nearest neighbour)
    ijk = np.rint(cit.ras_to_ijk(t1.voxel_ras_grid())).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(cit.shape3)), axis=-1)
    labels = np.zeros(t1.shape3, np.int16)
    labels[inside] = np.rint(cit.data[ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]]).astype(np.int16)
    lo = np.floor(t1.ras_to_ijk([r[0] for r in crop_ras])).astype(int)
    hi = np.ceil(t1.ras_to_ijk([r[1] for r in crop_ras])).astype(int)
    sl = tuple(slice(max(a, 0), b) for a, b in zip(lo, hi))
    m = t1.ras_from_ijk.copy()
    m[:3, 3] = t1.ijk_to_ras([s.start for s in sl])
    labels, gm, wm = labels[sl], gm[sl], wm[sl]
    if gm.max() > 1.5:
        gm, wm = gm / 255.0, wm / 255.0
    chi = 0.015 * gm - 0.03 * wm
    for value, c in ATLAS_CHI_PPM.items():
        chi[np.isin(labels, [value, value + 100])] = c
    rng = np.random.default_rng(0)
    chi = ndimage.gaussian_filter(chi, 0.6) + 0.006 * rng.standard_normal(chi.shape)
    nuclei = np.zeros(labels.shape, np.int16)
    for value, (left, right) in enumerate(((16, 116), (7, 107), (8, 108)), start=0):
        nuclei[np.isin(labels, [left] + ([9] if left == 7 else []))] = 2 * value + 1
        nuclei[np.isin(labels, [right] + ([109] if right == 107 else []))] = 2 * value + 2
    brain = ndimage.gaussian_filter(ndimage.binary_fill_holes((gm + wm) > 0.5).astype(np.float32), 2.0) > 0.5
    return (Volume(chi.astype(np.float32), m, "QSM"), Volume(nuclei, m, "nuclei"), Volume(brain, m, "brain"))


def brain_surface(mask: Volume, step: int = 2):
    """vtkPolyData of a brain mask's surface (RAS mm), decimated by sampling every ``step`` voxels."""
    return mrml.mask_surface(mask, step)


def plan_atlas_picture(log=print):
    """A plan on the atlas-based χ map (no phantom needed): QSM, nuclei, AC/PC/MS, ranked trajectories."""
    logic = PlannerLogic(mrml.new_scene())
    chi, nuclei, brain = atlas_chi_volumes()
    qsm = mrml.add_volume(logic.scene, chi, "QSM", kind="qsm")
    names = {1: "STN_L", 2: "STN_R", 3: "SN_L", 4: "SN_R", 5: "RN_L", 6: "RN_R"}
    seg = mrml.add_segmentation(logic.scene, nuclei, names, NUCLEI_NAME)
    logic.set_landmarks({"AC": [0.0, 2.0, -4.0], "PC": [0.0, -24.0, -2.0], "MS": [0.0, -10.0, 40.0]})
    mrml.add_model(logic.scene, brain_surface(brain, step=2), "Brain", color=(0.9, 0.85, 0.8), opacity=0.08,
                   slice_intersection=False)
    for side in ("left", "right"):
        plan = logic.plan_trajectory(side, segmentation_node=seg)
        ranked = mrml.table_to_rows(logic.rank_entries(side, qsm, seg, target_ras=plan["target_ras"]))
        best = np.array([ranked[0]["R"], ranked[0]["A"], ranked[0]["S"]])
        logic.plan_trajectory(side, target_ras=plan["target_ras"], entry_ras=best)
    log("atlas-based χ map (MNI ICBM152 GM/WM + CIT168 nuclei), not a patient")
    return logic, qsm, ["atlas picture"]


def write_screenshots(logic: PlannerLogic, qsm_node, out_dir, side: str = "L", size=(640, 560),
                      max_kb: int = 290, with_context: bool = True, view_direction=(-0.3, 1.0, 0.3),
                      distance_mm: float = 250.0) -> tuple[Path, Path]:
    """Write screenshot_slice.png and screenshot_3d.png for the plan on ``side`` ("L"/"R"); with
    ``with_context`` the veins (``logic.vessels_model``) and the brain surface are added as models."""
    out_dir = Path(out_dir)
    target, entry = logic.trajectories()[side]
    d = (entry - target) / np.linalg.norm(entry - target)
    normal, transverse = trajectory_plane(target, entry)
    truth = logic.node(TRUTH_NAME, "vtkMRMLSegmentationNode")
    if truth is not None:
        truth.GetDisplayNode().SetVisibility(False)
    centre = target + 22.0 * d
    if len(logic.trajectories()) > 1:
        centre[0] = np.mean([t[0] for t, _ in logic.trajectories().values()])  # both sides in view
    seg = logic.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
    extras = []
    if with_context:  # the veins the entry search avoided, and the brain surface (3-D context)
        try:
            extras.append(logic.vessels_model(qsm_node, seg))
            extras.append(logic.brain_model(qsm_node))
        except Exception:  # noqa: BLE001 — pictures without them are still pictures
            pass
    slice_rgb = render.render_slice(logic.scene, qsm_node, normal=normal, transverse=transverse,
                                    center_ras=centre, fov_mm=120.0, size=size)
    slice_path = render.save_png(slice_rgb, out_dir / "screenshot_slice.png", max_kb=max_kb)
    if seg is not None:
        seg.GetDisplayNode().SetOpacity3D(0.9)
    mid = np.mean([t for t, _ in logic.trajectories().values()], axis=0)
    three = render.render_3d(logic.scene, size=size, view_direction=view_direction, distance_mm=distance_mm,
                             focus_ras=mid + np.array([0.0, 10.0, 32.0]))
    three_path = render.save_png(three, out_dir / "screenshot_3d.png", max_kb=max_kb)
    return slice_path, three_path


def plan_digital_patient(seed: int = 0, small: bool = True, log=print, atlas: str = "affine",
                         ct_registration: str = "register-or-known"):
    """The digital patient through the whole panel flow (``flow.run_whole_flow``: QSM from the GRE,
    registrations, nuclei on the QSM, ranked entries, frame). Returns (logic, qsm node, notes)."""
    from .flow import run_whole_flow
    out = run_whole_flow(seed=seed, small=small, atlas=atlas, ct_registration=ct_registration, log=log)
    logic = out["logic"]
    return logic, out["qsm"], list(logic.messages)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m QSMPlannerLib.scene.screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="full-size digital patient (slow)")
    p.add_argument("--atlas", action="store_true", help="atlas-based χ picture instead of the digital patient")
    p.add_argument("--mrb", help="also save the scene as this .mrb")
    p.add_argument("--normalize", action="store_true",
                   help="atlas prior by normalize_to_mni on the T1 (minutes) instead of the known MNI->T1 affine")
    args = p.parse_args(argv)
    if args.atlas:
        logic, qsm, _ = plan_atlas_picture()
    else:
        logic, qsm, _ = plan_digital_patient(args.seed, small=not args.full,
                                             atlas="normalize" if args.normalize else "affine")
    paths = write_screenshots(logic, qsm, args.out_dir)
    if args.mrb:
        paths += (logic.save_scene(args.mrb),)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
