"""QSM on harder digital heads: our pipeline vs the Laplacian + V-SHARP + TKD baseline (bench/qsm.py)
on heads that depart from the default digital patient (phantom.patient.HeadVariation): other chi values,
denser veins, fine chi texture (0.02 ppm SD, ~1 mm), more air near the brain (ear canals, larger sinuses),
more noise, an uncorrected multi-coil
phase (phase of the 8-coil sum with an RSS magnitude; "coil-sum": magnitude of the sum too, with signal
dropouts inside the brain), all of them at once on a 15 deg oblique slab. One run, one table:
NRMSE / HFEN / XSIM over the true brain mask, nucleus mean errors (ppm), time per call, peak RSS.

    .venv/bin/python bench/qsm_hard.py                   # 3 T, 5 echoes, 256x256x128 (default size)
    .venv/bin/python bench/qsm_hard.py --small --cases chi coils
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "QSMPlanner"))
_spec = importlib.util.spec_from_file_location("bench_qsm", HERE / "qsm.py")
bench_qsm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_qsm)

from QSMPlannerLib.phantom.patient import HeadVariation  # noqa: E402
from QSMPlannerLib.qsm import reconstruct_qsm  # noqa: E402

ALL = HeadVariation("all", chi_scale_nuclei=1.4, chi_wm_ppm=-0.045, chi_gm_ppm=0.02, extra_cortical_veins=6,
                    ear_canals=True, sinus_scale=1.3, coil_combination="phase-of-sum", chi_texture_ppm=0.02)
CASES = {   # name -> (variation, snr, tilt_deg)
    "default": (None, 100.0, 0.0),
    "chi": (HeadVariation("chi", chi_scale_nuclei=1.4, chi_wm_ppm=-0.045, chi_gm_ppm=0.02), 100.0, 0.0),
    "chi-low": (HeadVariation("chi-low", chi_scale_nuclei=0.7, chi_wm_ppm=-0.02), 100.0, 0.0),
    "veins": (HeadVariation("veins", extra_cortical_veins=6), 100.0, 0.0),
    "air": (HeadVariation("air", ear_canals=True, sinus_scale=1.3), 100.0, 0.0),
    "texture": (HeadVariation("texture", chi_texture_ppm=0.02), 100.0, 0.0),
    "noise": (None, 40.0, 0.0),
    "coils": (HeadVariation("coils", coil_combination="phase-of-sum"), 100.0, 0.0),
    "coil-sum": (HeadVariation("coil-sum", coil_combination="sum"), 100.0, 0.0),
    "all-oblique": (ALL, 60.0, 15.0),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--no-before", dest="before", action="store_false",
                    help="skip the 'ours, old speed settings' rows (speed settings before 2026-12-07)")
    args = ap.parse_args(argv)
    from QSMPlannerLib.phantom import make_patient
    bench_qsm.warm_up()
    rows = []
    for name in args.cases:
        variation, snr, tilt = CASES[name]
        t = time.perf_counter()
        patient = make_patient(seed=args.seed, small=args.small, tilt_deg=tilt, snr=snr, variation=variation)
        print(f"# {name}: simulated in {time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr, flush=True)
        with bench_qsm.PeakRSS() as mem:
            t = time.perf_counter()
            res = reconstruct_qsm(patient.gre)
            wall = time.perf_counter() - t
        rows.append((name, "ours (default)", bench_qsm.score(res.chi_ppm.data, patient), wall, mem.peak,
                     os.getloadavg()[0]))
        if args.before:
            del res
            with bench_qsm.previous_defaults(), bench_qsm.PeakRSS() as mem:
                t = time.perf_counter()
                res = reconstruct_qsm(patient.gre)
                wall = time.perf_counter() - t
            rows.append((name, "ours, old speed settings", bench_qsm.score(res.chi_ppm.data, patient), wall,
                         mem.peak, os.getloadavg()[0]))
        with bench_qsm.PeakRSS() as mem:
            t = time.perf_counter()
            chi, _ = bench_qsm.baseline(patient.gre)
            wall = time.perf_counter() - t
        rows.append((name, "baseline lap+vsharp+tkd", bench_qsm.score(chi, patient), wall, mem.peak,
                     os.getloadavg()[0]))
        del patient, res, chi
    rois = list(bench_qsm.ROIS)
    print(f"\nharder digital heads (seed {args.seed}{', small' if args.small else ''}): chi vs truth in the true "
          "brain mask; ROI columns: mean chi error (ppm, both maps at their brain mean)")
    print(f"{'case':<12} {'method':<24} {'NRMSE%':>7} {'HFEN%':>7} {'XSIM':>6} "
          + " ".join(f"{r + s:>7}" for r in rois for s in ("_L", "_R"))
          + f" {'max|ROI|':>8} {'time s':>7} {'peakGiB':>7} {'load':>5}")
    for case, name, met, wall, peak, load in rows:
        roi = [met[f"{r}_{s}"] for r in rois for s in "LR"]
        print(f"{case:<12} {name:<24} {met['nrmse']:7.1f} {met['hfen']:7.1f} {met['xsim']:6.3f} "
              + " ".join(f"{x:+7.3f}" for x in roi) + f" {np.nanmax(np.abs(roi)):8.4f} {wall:7.1f} {peak:7.2f} {load:5.1f}")
    print("\nours / baseline per case: NRMSE ratio, time ratio (same run, same load); ours / ours with the old "
          "speed settings: NRMSE ratio, time ratio")
    by = {(c, n): (m, w) for c, n, m, w, *_ in rows}
    for case in args.cases:
        (o, wo), (b, wb) = by[(case, "ours (default)")], by[(case, "baseline lap+vsharp+tkd")]
        line = f"{case:<12} NRMSE x{o['nrmse'] / b['nrmse']:.3f}   time x{wo / wb:.2f}"
        if (case, "ours, old speed settings") in by:
            p, wp = by[(case, "ours, old speed settings")]
            line += f"   | vs old settings: NRMSE x{o['nrmse'] / p['nrmse']:.3f}   time x{wo / wp:.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
