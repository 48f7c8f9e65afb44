"""Pictures of a plan for the README: an oblique slice along the trajectory (QSM, nuclei, trajectory,
electrode) and a 3-D view (nuclei surfaces, electrodes, markups), drawn offscreen by Slicer's displayable
managers.

    python -m QSMPlannerLib.panel.screenshots OUT_DIR [--seed 0] [--full]

builds the digital patient, runs the whole panel flow on it (``flow.run_whole_flow``: QSM from the GRE,
registrations, nuclei on the QSM, ranked safe entries, frame), and writes ``screenshot_slice.png`` (an
oblique slice along the left trajectory: QSM, nuclei outlines, trajectories, electrodes) and
``screenshot_3d.png`` (nuclei surfaces, electrodes, markups) into OUT_DIR.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..scene import mrml, render
from ..scene.present import NUCLEI_NAME, TRUTH_NAME, brain_mask_of
from .logic import PlannerLogic


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
        extras.append(logic.vessels_model(qsm_node))
        brain = brain_mask_of(qsm_node)
        if brain is not None:
            extras.append(mrml.add_model(logic.scene, mrml.mask_surface(brain, step=2), "Brain",
                                         color=(0.85, 0.8, 0.75), opacity=0.08, slice_intersection=False,
                                         parent_transform=qsm_node.GetParentTransformNode()))
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
    p = argparse.ArgumentParser(prog="python -m QSMPlannerLib.panel.screenshots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--full", action="store_true", help="full-size digital patient (slow)")
    p.add_argument("--mrb", help="also save the scene as this .mrb")
    p.add_argument("--normalize", action="store_true",
                   help="atlas prior by normalize_to_mni on the T1 (minutes) instead of the known MNI->T1 affine")
    args = p.parse_args(argv)
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
