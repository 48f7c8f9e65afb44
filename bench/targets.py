"""Targets benchmark: the suggested STN, GPi and VIM targets on digital patients against their truth, one run,
one table.

Per patient (the digital patients and atlas priors of ``bench/segmentation.py``, shared through --cache):
``segment_nuclei`` on the QSM reconstructed from the GRE; the true AC/PC/MS landmarks (landmark picking is
not what is measured here) carried into the QSM space by the true transform.

  GPi   ours: ``planning.suggest_gpi`` on our segmentation. Baselines: the same rule on the registered
        CIT168 prior alone, and the classic indirect AC-PC coordinates (21, +2.5, -5 mm). Checks: the
        target's voxel lies in the true posteroventral GPi (``planning.posteroventral`` of the true GPi
        labels in true AC-PC coordinates); its distance to the true optic tract (to the nearest tract voxel
        centre minus half a voxel); its depth in the true GPi (to the nearest non-GPi voxel centre minus half
        a voxel).
  VIM   ours: ``planning.suggest_vim`` with the third ventricle measured on the T1
        (``measure_third_ventricle``). Reference: the same formula on the true walls (the painted ventricle's
        walls through the patient's deformation, ``params["third_ventricle"]``). Baseline: the fixed 14 mm
        variant. The worked example of the formula (L 24 mm, walls +-3 mm -> (14, -6, 0)) is checked too.
  STN   ours: ``planning.suggest_stn`` (unchanged): the target's voxel lies in the true STN.

    .venv/bin/python bench/targets.py [--patients 5] [--cache DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "QSMPlanner"))
from QSMPlannerLib.planning import (ThirdVentricle, measure_third_ventricle, posteroventral,  # noqa: E402
                                    suggest_target_of_kind, suggest_vim, vim_acpc)
from QSMPlannerLib.stereotaxy import acpc_from_ras  # noqa: E402

OPTIC_TRACT, TRUE_GPI = 206, {"left": 6, "right": 106}
TRUE_STN = {"left": 16, "right": 116}
MIN_TRACT_MM = 2.0
VIM_TOLERANCE_MM = 0.1


def _bench_segmentation():
    spec = importlib.util.spec_from_file_location("bench_segmentation", HERE / "segmentation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _apply(m, p):
    return np.asarray(p, float) @ np.asarray(m)[:3, :3].T + np.asarray(m)[:3, 3]


def _voxel(vol, ras):
    return tuple(np.rint(vol.ras_to_ijk(np.asarray(ras, float))).astype(int))


def _distance_to(mask, ijk, voxel_mm) -> float:
    """Distance (mm) from voxel ``ijk`` to the nearest voxel of ``mask`` (centres), minus half a voxel; on a
    box of 30 voxels around it (inf when ``mask`` has no voxel there)."""
    box = tuple(slice(max(c - 30, 0), c + 31) for c in ijk)
    sub = mask[box]
    if not sub.any():
        return float("inf")
    local = tuple(c - b.start for c, b in zip(ijk, box))
    return float(ndimage.distance_transform_edt(~sub, sampling=voxel_mm)[local]) - 0.5 * float(np.mean(voxel_mm))


def gpi_checks(target_ras, labels, landmarks_gre, side) -> dict:
    """Where ``target_ras`` (GRE RAS) lies against the truth labels (GRE grid): in the true posteroventral
    GPi, distance to the optic tract, depth in the GPi (distance to its outside; < 0: outside, then the
    distance to the GPi)."""
    lab = np.asarray(labels.data)
    gpi = lab == TRUE_GPI[side]
    frame = acpc_from_ras(landmarks_gre["AC"], landmarks_gre["PC"], landmarks_gre["MS"])
    idx = np.argwhere(gpi)
    pv = np.zeros_like(gpi)
    pv[tuple(idx[posteroventral(_apply(frame, labels.ijk_to_ras(idx)))].T)] = True
    ijk = _voxel(labels, target_ras)
    depth = _distance_to(~gpi, ijk, labels.voxel_mm) if gpi[ijk] else -_distance_to(gpi, ijk, labels.voxel_mm)
    return {"in_pv": bool(pv[ijk]), "tract_mm": _distance_to(lab == OPTIC_TRACT, ijk, labels.voxel_mm),
            "depth_mm": depth}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--cache", type=Path, help="patients/priors/QSMs shared with bench/segmentation.py")
    args = ap.parse_args(argv)
    bs = _bench_segmentation()
    from QSMPlannerLib.segmentation import segment_nuclei
    gpi = {m: [] for m in ("ours", "prior", "indirect")}
    gap = []
    vim = {"ours": [], "fixed": [], "walls": []}
    stn_in, times = [], {"gpi": [], "vim": [], "stn": []}
    worked = suggest_vim("right", {"AC": [0, 12, 0], "PC": [0, -12, 0], "MS": [0, 0, 40]}, 6.0).target.acpc
    for seed in range(args.seed0, args.seed0 + args.patients):
        case = bs.prepare(seed, False, args.cache, True)
        patient = bs.load_patient(seed, False, args.cache)
        qsm, labels = case["chi_recon"], patient.truth["labels_gre"]
        gre_from_t1 = np.linalg.inv(patient.transforms["t1_from_gre"])
        lm_gre = {k: _apply(gre_from_t1, v) for k, v in patient.landmarks.items()}
        seg = segment_nuclei(qsm, case["prior"])
        t0 = time.perf_counter()
        tv = measure_third_ventricle(patient.t1, patient.landmarks)
        times["vim"].append(time.perf_counter() - t0)
        true = patient.params["third_ventricle"]
        true_tv = ThirdVentricle(true["left_wall_x_acpc_mm"], true["right_wall_x_acpc_mm"], true["ap_acpc_mm"])
        vim["walls"] += [tv.left_wall_x_mm - true_tv.left_wall_x_mm, tv.right_wall_x_mm - true_tv.right_wall_x_mm]
        for side in ("left", "right"):
            t0 = time.perf_counter()
            ours = suggest_target_of_kind("gpi", side, seg, lm_gre)
            times["gpi"].append(time.perf_counter() - t0)
            from_prior = suggest_target_of_kind("gpi", side, seg.prior, lm_gre)
            for m, ras in (("ours", ours.target.ras), ("prior", from_prior.target.ras),
                           ("indirect", ours.cross_check.ras)):
                gpi[m].append(gpi_checks(ras, labels, lm_gre, side))
            gap.append(ours.difference["distance_mm"])
            t0 = time.perf_counter()
            v_ours = suggest_vim(side, patient.landmarks, tv).target.acpc
            times["vim"][-1] += time.perf_counter() - t0
            v_true = suggest_vim(side, patient.landmarks, true_tv).target.acpc
            v_fixed = vim_acpc(side, np.linalg.norm(patient.landmarks["AC"] - patient.landmarks["PC"]))
            vim["ours"].append(float(np.linalg.norm(v_ours - v_true)))
            vim["fixed"].append(float(np.linalg.norm(v_fixed - v_true)))
            t0 = time.perf_counter()
            stn = suggest_target_of_kind("stn", side, seg).target.ras
            times["stn"].append(time.perf_counter() - t0)
            stn_in.append(bool(np.asarray(labels.data)[_voxel(labels, stn)] == TRUE_STN[side]))
        print(f"# patient {seed}: GPi targets {[round(g['tract_mm'], 1) for g in gpi['ours'][-2:]]} mm from the "
              f"optic tract; ventricle {true_tv.width_mm:.2f} mm true, {tv.width_mm:.2f} mm measured",
              file=sys.stderr, flush=True)

    n = len(stn_in)
    frac = lambda xs: f"{sum(xs)}/{len(xs)}"  # noqa: E731
    mw = lambda xs, worst: f"{np.mean(xs):.2f} [{worst(xs):.2f}]"  # noqa: E731
    print(f"\n## Targets benchmark: {args.patients} digital patients x 2 sides, reconstructed QSM, true landmarks "
          "(mean [worst])\n")
    print("| kind | method | check | result | vs ours |")
    print("|---|---|---|---|---|")
    names = {"ours": "ours: posteroventral GPi of our segmentation", "prior": "same rule on the CIT168 prior alone",
             "indirect": "classic indirect (21, +2.5, -5 mm from the MCP)"}
    for m in ("ours", "prior", "indirect"):
        g = gpi[m]
        tract = [x["tract_mm"] for x in g]
        depth = [x["depth_mm"] for x in g]
        print(f"| GPi | {names[m]} | inside the true posteroventral GPi | {frac([x['in_pv'] for x in g])} | |")
        print(f"| GPi | {names[m]} | distance to the true optic tract, mm (target >= {MIN_TRACT_MM:g}) | "
              f"{mw(tract, np.min)} | {np.mean(tract) / np.mean([x['tract_mm'] for x in gpi['ours']]):.2f}x |")
        print(f"| GPi | {names[m]} | depth inside the true GPi, mm (< 0: outside) | {mw(depth, np.min)} | |")
    print(f"| GPi | direct (ours) vs indirect | distance between them, mm | {mw(gap, np.max)} | |")
    print(f"| VIM | formula, worked example (L 24 mm, walls +-3 mm) | AC-PC mm (expected 14.0, -6.0, 0.0) | "
          f"{', '.join(f'{v:.2f}' for v in worked)} | |")
    print(f"| VIM | ours: walls measured on the T1 | walls measured - true, mm | "
          f"{np.mean(vim['walls']):+.2f} [{np.max(np.abs(vim['walls'])):.2f}] | |")
    print(f"| VIM | ours: walls measured on the T1 | distance to the formula on the true walls, mm (target <= "
          f"{VIM_TOLERANCE_MM:g}) | {mw(vim['ours'], np.max)} | 1.00x |")
    print(f"| VIM | fixed 14 mm from the midline | distance to the formula on the true walls, mm | "
          f"{mw(vim['fixed'], np.max)} | {np.mean(vim['fixed']) / max(np.mean(vim['ours']), 1e-9):.2f}x |")
    print(f"| STN | ours (unchanged) | inside the true STN | {frac(stn_in)} | |")
    print(f"\n- time per target: GPi {np.mean(times['gpi']):.2f} s, STN {np.mean(times['stn']):.2f} s mean; third "
          f"ventricle measured on the T1 and both VIMs {np.mean(times['vim']):.2f} s per patient")
    ok_gpi = all(x["in_pv"] and x["tract_mm"] >= MIN_TRACT_MM for x in gpi["ours"])
    print(f"- GPi target (every target inside the true posteroventral GPi and >= {MIN_TRACT_MM:g} mm from the optic "
          f"tract): {'met' if ok_gpi else 'MISSED'}; VIM worked example to {VIM_TOLERANCE_MM:g} mm: "
          f"{'met' if np.allclose(worked, [14.0, -6.0, 0.0], atol=VIM_TOLERANCE_MM) else 'MISSED'}; VIM on the "
          f"patients within {VIM_TOLERANCE_MM:g} mm of the formula on the true walls: "
          f"{sum(v <= VIM_TOLERANCE_MM for v in vim['ours'])}/{n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
