"""Pictures of a plan for the README: an oblique slice along the trajectory (QSM, nuclei, trajectory,
electrode) and a 3-D view (nuclei surfaces, electrodes, markups), drawn offscreen by Slicer's displayable
managers.

    python -m QSMPlannerLib.scene.screenshots OUT_DIR [--seed 0] [--full]

builds the digital patient, runs the stages that exist (QSM, segmentation; the ground truth stands in
for a missing stage and the picture's caption says so), plans both sides and writes
``screenshot_slice.png`` and ``screenshot_3d.png`` into OUT_DIR.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

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


def write_screenshots(logic: PlannerLogic, qsm_node, out_dir, side: str = "L", size=(640, 560),
                      max_kb: int = 290) -> tuple[Path, Path]:
    """Write screenshot_slice.png and screenshot_3d.png for the plan on ``side`` ("L"/"R")."""
    out_dir = Path(out_dir)
    target, entry = logic.trajectories()[side]
    d = (entry - target) / np.linalg.norm(entry - target)
    normal, transverse = trajectory_plane(target, entry)
    truth = logic.node(TRUTH_NAME, "vtkMRMLSegmentationNode")
    if truth is not None:
        truth.GetDisplayNode().SetVisibility(False)
    slice_rgb = render.render_slice(logic.scene, qsm_node, normal=normal, transverse=transverse,
                                    center_ras=target + 22.0 * d, fov_mm=110.0, size=size)
    slice_path = render.save_png(slice_rgb, out_dir / "screenshot_slice.png", max_kb=max_kb)
    seg = logic.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
    if seg is not None:
        seg.GetDisplayNode().SetOpacity3D(0.9)
    mid = np.mean([t for t, _ in logic.trajectories().values()], axis=0)
    three = render.render_3d(logic.scene, size=size, view_direction=(-1.0, 0.55, 0.3), distance_mm=200.0,
                             focus_ras=mid + np.array([0.0, 0.0, 18.0]))
    three_path = render.save_png(three, out_dir / "screenshot_3d.png", max_kb=max_kb)
    return slice_path, three_path


def plan_digital_patient(seed: int = 0, small: bool = True, log=print):
    """The digital patient through the stages that exist, as a scene. Returns (logic, qsm node, notes)."""
    from ..phantom import make_patient
    notes = []
    logic = PlannerLogic(mrml.new_scene())
    patient = make_patient(seed=seed, small=small)
    logic.patient = patient
    nodes = logic.load_patient_nodes(patient, show_truth=True, known_transforms=True)
    t_gre = nodes["T1_from_GRE"]
    try:
        qsm = logic.run(logic.qsm_task(nodes["gre_magnitude"][0], nodes["gre_phase"][0]))
        notes.append("QSM reconstructed from the GRE")
    except ImportError:
        qsm = mrml.add_volume(logic.scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=t_gre)
        notes.append("QSM stage missing: true χ shown")
    try:
        prior = mrml.add_volume(logic.scene, patient.truth["labels_gre"], "Prior labels", kind="labelmap",
                                parent_transform=t_gre)
        logic.run(logic.segmentation_task(qsm, prior_node=prior))
        notes.append("nuclei segmented on the QSM (atlas prior)")
    except ImportError:
        lab = patient.truth["labels_gre"]
        out = np.zeros(lab.shape3, np.int16)
        for value, (l, r) in enumerate(((16, 116), (7, 107), (8, 108))):
            out[np.isin(lab.data, [l] + ([9] if l == 7 else []))] = 2 * value + 1
            out[np.isin(lab.data, [r] + ([109] if r == 107 else []))] = 2 * value + 2
        names = {1: "STN_L", 2: "STN_R", 3: "SN_L", 4: "SN_R", 5: "RN_L", 6: "RN_R"}
        mrml.add_segmentation(logic.scene, lab.with_data(out), names, NUCLEI_NAME, parent_transform=t_gre)
        notes.append("segmentation stage missing: true nuclei shown")
    seg = logic.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
    for side in ("left", "right"):
        plan = logic.plan_trajectory(side, segmentation_node=seg)
        ranked = mrml.table_to_rows(logic.rank_entries(side, qsm, seg, target_ras=plan["target_ras"]))
        if ranked:
            best = np.array([ranked[0]["R"], ranked[0]["A"], ranked[0]["S"]])
            logic.plan_trajectory(side, target_ras=plan["target_ras"], entry_ras=best)
    logic.coordinates_table(nodes.get("CT"))
    for n in notes:
        log(n)
    return logic, qsm, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m QSMPlannerLib.scene.screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="full-size digital patient (slow)")
    p.add_argument("--mrb", help="also save the scene as this .mrb")
    args = p.parse_args(argv)
    logic, qsm, _ = plan_digital_patient(args.seed, small=not args.full)
    paths = write_screenshots(logic, qsm, args.out_dir)
    if args.mrb:
        paths += (logic.save_scene(args.mrb),)
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
