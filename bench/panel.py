"""Panel benchmark: how long the Slicer panel's main thread is busy during each stage of the whole flow on the
digital patient, with the long stages in worker processes as in Slicer (``PlannerLogic`` on a real MRML scene,
slicer-core). Target (issue 17): the event loop never blocks more than 0.2 s during a stage.

For every stage: the time to build it from the nodes (on the click), the longest single poll of the running
stage (``step``, called every 50 ms as the panel's timer does), the number of polls, and the time to turn its
result into nodes (``finish``). Also the same stages called in this process for the wall-time overhead of the
worker processes.

    python bench/panel.py [--small] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))

from QSMPlannerLib.panel.logic import PlannerLogic  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402

POLL_S = 0.05
LIMIT_S = 0.2


def timed_stage(make, rows, name, background=True):
    t0 = time.perf_counter()
    task = make()
    build = time.perf_counter() - t0
    t_start = time.perf_counter()
    task.start(background=background)
    start = time.perf_counter() - t_start
    longest, polls = start, 0
    while True:
        t = time.perf_counter()
        done = task.step()
        longest = max(longest, time.perf_counter() - t)
        polls += 1
        if done:
            break
        time.sleep(POLL_S)
    wall = time.perf_counter() - t0
    t = time.perf_counter()
    nodes = task.finish()
    finish = time.perf_counter() - t
    rows.append((name, build, longest, polls, finish, wall + finish))
    return nodes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="small digital patient (2 mm)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = []
    logic = PlannerLogic(mrml.new_scene())
    nodes = timed_stage(lambda: logic.digital_patient_task(seed=args.seed, small=args.small), rows, "digital patient")
    patient = logic.patient
    mag, pha, t1, ct = nodes["gre_magnitude"][0], nodes["gre_phase"][0], nodes["T1"], nodes["CT"]
    qsm = timed_stage(lambda: logic.qsm_task(mag, pha), rows, "QSM")
    moved = [n for n in logic.gre_nodes_for(mag) if n is not mag] + [qsm]
    timed_stage(lambda: logic.registration_task(t1, mag, "T1_from_GRE", moved), rows, "GRE -> T1")
    timed_stage(lambda: logic.frame_task(ct), rows, "frame")
    logic.set_transform(ct, patient.transforms["t1_from_ct"], "T1_from_CT")
    logic.normalization_from_affine(patient.transforms["t1_from_mni"], t1)
    seg = timed_stage(lambda: logic.segmentation_task(qsm, t1), rows, "segmentation")
    timed_stage(lambda: logic.risk_task(qsm, seg, t1), rows, "risk map")
    for side in ("left", "right"):
        timed_stage(lambda: logic.plan_side_task(side, qsm, seg, t1, ct), rows, f"plan {side}")
    t = time.perf_counter()
    logic.coordinates_table(ct, qsm)
    dt = time.perf_counter() - t
    rows.append(("coordinate table (main thread)", dt, 0.0, 0, 0.0, dt))

    size = "small (2 mm)" if args.small else "full size (1 mm GRE 256x256x128x5)"
    print(f"## Panel main thread per stage, digital patient seed {args.seed}, {size}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| stage | build from nodes s | longest poll s | polls | result to nodes s | stage wall s | "
          "longest block / 0.2 s |")
    print("|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, build, longest, polls, finish, wall in rows:
        block = max(build, longest, finish)
        worst = max(worst, block)
        print(f"| {name} | {build:.3f} | {longest:.3f} | {polls} | {finish:.3f} | {wall:.1f} | {block / LIMIT_S:.2f}x |")
    print(f"\nLongest main-thread block: {worst:.3f} s ({worst / LIMIT_S:.2f}x the 0.2 s target).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
