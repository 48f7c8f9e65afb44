"""qsmplanner demo: build the digital patient, write it as BIDS, run the whole flow, report time and memory."""
from __future__ import annotations

import json
import time
from pathlib import Path


def register(sub):
    p = sub.add_parser(
        "demo", help="end-to-end demo on the digital patient (phantom -> plan, scene, report)",
        description="Builds the digital patient (default size: 3 T, 5 echoes, ~1 mm, veins on the straight "
                    "standard trajectories), writes it as BIDS under OUT/patient, runs `qsmplanner run` on it "
                    "into OUT/plan, compares with the ground truth and prints the total time and peak memory.")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--small", action="store_true", help="small patient (fast; for tests)")
    p.add_argument("--no-ct", action="store_true", help="plan without the frame CT")
    p.add_argument("--no-scene", action="store_true", help="skip scene.mrb")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..phantom import make_patient, write_patient
    from ..workflow import export_plan, plan_patient
    from ..workflow.document import peak_memory_mb
    from .cmd_run import print_summary
    from .common import progress_bar
    out = Path(args.out)
    t0 = time.perf_counter()
    patient = make_patient(seed=args.seed, small=args.small, veins_on_standard_trajectory=True,
                           progress=progress_bar("phantom"))
    write_patient(patient, out / "patient")
    t_phantom = time.perf_counter() - t0
    ct = None if args.no_ct else patient.ct
    result = plan_patient(patient.gre, patient.t1, ct, patient.landmarks, progress=progress_bar("run"))
    paths = export_plan(result, out / "plan", scene=not args.no_scene, progress=progress_bar("outputs"))
    total = time.perf_counter() - t0
    print_summary(result, paths, total)
    check = truth_check(patient, result)
    for line in check["lines"]:
        print(line)
    print(json.dumps({"phantom_s": round(t_phantom, 1), "total_s": round(total, 1),
                      "peak_memory_mb": peak_memory_mb(), "truth": check["numbers"]}))
    return 0


def truth_check(patient, result) -> dict:
    """Suggested targets vs the true STN centroids (T1 RAS mm), and each suggested trajectory's clearance
    from the TRUE veins (instrument surface), measured on the truth label map."""
    import numpy as np
    from ..planning import RiskMap, score_trajectory
    labels = patient.truth["labels_gre"]
    veins = labels.with_data(np.isin(np.asarray(labels.data), (210, 211)).astype(np.uint8))
    t1_from_gre = np.asarray(patient.transforms["t1_from_gre"], float)
    rm = RiskMap.from_masks(vessels=veins, world_from_volume={"vessels": t1_from_gre})
    lines, numbers = [], {}
    for side, sp in result.sides.items():
        s = "L" if side == "left" else "R"
        true_c = np.asarray(patient.stn_centroids[f"STN_{s}"], float)
        err = float(np.linalg.norm(sp.target_ras - true_c))
        truth_score = score_trajectory(sp.target_ras, sp.chosen.entry_ras, rm, side, sp.chosen.margin_mm)
        std = sp.search.standard
        std_truth = score_trajectory(std.target_ras, std.entry_ras, rm, side, std.margin_mm)
        numbers[side] = {"target_to_true_stn_centroid_mm": round(err, 2),
                         "suggested_true_vein_clearance_mm": round(truth_score.vessel_clearance_mm, 2),
                         "standard_true_vein_clearance_mm": round(std_truth.vessel_clearance_mm, 2)}
        lines.append(f"truth {side}: target {err:.1f} mm from the true STN centroid; suggested trajectory "
                     f"{truth_score.vessel_clearance_mm:.1f} mm from the true veins (standard "
                     f"{std_truth.vessel_clearance_mm:.1f} mm)")
    return {"lines": lines, "numbers": numbers}
