"""Segmentation benchmark: STN/SN/RN and GPi/GPe on digital patients, ours vs the atlas prior alone, one run,
one table.

Per patient (phantom.make_patient, different seeds = different anatomy deformations): the T1 is
normalised to MNI (registration.normalize_to_mni), the CIT168 atlas is carried onto the GRE/QSM grid
through the phantom's true t1_from_gre (registration error kept out of this benchmark) as an
``AtlasPrior`` (nearest labels + the atlas and the transform, as ``qsmplanner segment`` does), and
``segment_nuclei`` runs on (a) the ground-truth χ map and (b) the QSM reconstructed from the GRE
(qsm.reconstruct_qsm, defaults). Methods compared on the truth labels of the GRE grid:
  prior      the warped CIT168 atlas alone (the baseline the issue names)
  localized  our first stage only (prior moved, scaled, then affine-fitted onto the QSM)
  ours       the full method (localization + region competition + guard rails)
  ours/labels  the full method given only the nearest-label prior (the atlas resampled twice)
The GPi and GPe (``segmentation.pallidum``) are segmented in the same call; their own wall time is
reported beside the whole call's. Metrics per structure: Dice, 95% Hausdorff distance (mm;
voxel-quantized, so masks within about a voxel of the truth all score one voxel), average symmetric
surface distance (ASSD, mm), centroid error (mm); wall time of segment_nuclei (beyond the
registrations). Ratios: Dice ours/prior (>1
better), ASSD and centroid error prior/ours (>1 better).

    .venv/bin/python bench/segmentation.py [--patients 5] [--small] [--cache DIR] [--qsm truth|recon|both]
                                           [--robustness]
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))
from QSMPlannerLib.segmentation import NAMES, segment_nuclei  # noqa: E402
from QSMPlannerLib.segmentation.metrics import (centroid_error_mm, dice, hausdorff95_mm,  # noqa: E402
                                               mean_surface_distance_mm)
from QSMPlannerLib.segmentation.nuclei import prior_to_structures  # noqa: E402

KINDS = ("STN", "SN", "RN", "GPi", "GPe")
TARGET_DICE = 0.85
TARGET_STN_CENTROID_MM = 0.5
TARGET_PALLIDUM_CENTROID_MM = 0.7
TARGET_SECONDS = 30.0
TARGET_PALLIDUM_SECONDS = 10.0      # added per patient by the GPi/GPe stage


def _cached(path: Path | None, make):
    if path is not None and path.is_file():
        return pickle.load(open(path, "rb"))
    obj = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return obj


def _tag(seed: int, small: bool) -> str:
    """Cache file tag: the seed, the size and a hash of the phantom's source (a changed phantom: new files)."""
    import hashlib
    phantom = Path(__file__).resolve().parents[1] / "QSMPlanner" / "QSMPlannerLib" / "phantom"
    digest = hashlib.sha1(b"".join(f.read_bytes() for f in sorted(phantom.glob("*.py")))).hexdigest()[:12]
    return f"{seed}_{int(small)}_{digest}"


def load_patient(seed: int, small: bool, cache: Path | None):
    """The digital patient of ``seed`` (made once, then read from ``cache``)."""
    from QSMPlannerLib.phantom import make_patient
    return _cached(cache / f"patient{_tag(seed, small)}.pkl" if cache else None,
                   lambda: make_patient(seed=seed, small=small))


def prepare(seed: int, small: bool, cache: Path | None, want_recon: bool) -> dict:
    """Digital patient, atlas prior on the GRE grid and (optionally) the reconstructed QSM."""
    from QSMPlannerLib.registration import normalize_to_mni
    from QSMPlannerLib.segmentation.prior import atlas_prior
    tag = _tag(seed, small)
    t0 = time.perf_counter()
    patient = load_patient(seed, small, cache)
    t1 = time.perf_counter()

    def make_prior():
        norm = normalize_to_mni(patient.t1)
        return {"prior": atlas_prior(patient.truth["chi_ppm"], norm.transform,
                                     t1_from_reference=patient.transforms["t1_from_gre"])}
    d = _cached(cache / f"atlasprior{tag}.pkl" if cache else None, make_prior)
    t2 = time.perf_counter()
    if want_recon and "qsm" not in d:
        from QSMPlannerLib.qsm import reconstruct_qsm
        r = reconstruct_qsm(patient.gre)
        d["qsm"] = r.chi_ppm
        if cache:
            with open(cache / f"atlasprior{tag}.pkl", "wb") as f:
                pickle.dump(d, f)
    t3 = time.perf_counter()
    print(f"# patient {seed}: phantom {t1 - t0:.0f} s, normalisation+prior {t2 - t1:.0f} s, "
          f"QSM {t3 - t2:.0f} s", file=sys.stderr, flush=True)
    return {"truth": prior_to_structures(patient.truth["labels_gre"].data), "prior": d["prior"],
            "chi_truth": patient.truth["chi_ppm"], "chi_recon": d.get("qsm")}


def score(labels, truth, ras_from_ijk, voxel_mm) -> dict:
    out = {}
    for v, n in NAMES.items():
        a, b = labels == v, truth == v
        out[n] = (dice(a, b), hausdorff95_mm(a, b, voxel_mm), centroid_error_mm(a, b, ras_from_ijk),
                  mean_surface_distance_mm(a, b, voxel_mm))
    return out


def variants(case, seed: int) -> dict:
    """{name: (χ, truth labels 1..6, AtlasPrior)}: the reconstructed QSM as is and altered."""
    from QSMPlannerLib.registration import resample
    from QSMPlannerLib.volume import Volume
    chi, truth, prior = case["chi_recon"], case["truth"], case["prior"]
    data = np.asarray(chi.data, np.float32)
    noise = np.random.default_rng(seed).normal(0.0, 0.02, data.shape).astype(np.float32)
    m = chi.ras_from_ijk.copy()
    m[:3, :3] = m[:3, :3] @ np.diag([0.8, 0.8, 1.6])
    grid = Volume(np.zeros(tuple(int(n) for n in np.array(chi.shape3) / [0.8, 0.8, 1.6]), np.uint8), m)
    coarse = resample(chi, grid, interpolation="linear")
    coarse_truth = resample(Volume(truth.astype(np.int16), chi.ras_from_ijk), grid, interpolation="nearest")
    return {"as reconstructed": (chi, truth, prior),
            "chi + 0.05 ppm": (chi.with_data(data + 0.05), truth, prior),
            "contrast x 0.6": (chi.with_data(data * 0.6), truth, prior),
            "noise + 0.02 ppm": (chi.with_data(data + noise), truth, prior),
            "0.8 x 0.8 x 1.6 mm": (coarse, np.asarray(coarse_truth.data), prior.on_grid(grid))}


def print_robustness(robust: dict) -> None:
    names = list(dict.fromkeys(k[0] for k in robust))
    print("\n## Robustness: the reconstructed QSM altered (mean [worst] over patients and sides)\n")
    head = ("| QSM | STN Dice prior | STN Dice ours | STN Dice vs as reconstructed | STN centroid ours mm | "
            "SN Dice ours | RN Dice ours | GPi Dice ours | GPe Dice ours |")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    base = np.mean([r[0] for r in robust[(names[0], "ours", "STN")]])
    for v in names:
        get = lambda m, k, i: np.array([r[i] for r in robust[(v, m, k)]])  # noqa: E731
        dp, do, co = get("prior", "STN", 0), get("ours", "STN", 0), get("ours", "STN", 2)
        sn, rn = get("ours", "SN", 0), get("ours", "RN", 0)
        gpi, gpe = get("ours", "GPi", 0), get("ours", "GPe", 0)
        print(f"| {v} | {dp.mean():.3f} [{dp.min():.3f}] | {do.mean():.3f} [{do.min():.3f}] | "
              f"{do.mean() / base:.2f}x | {co.mean():.2f} [{co.max():.2f}] | {sn.mean():.3f} [{sn.min():.3f}] | "
              f"{rn.mean():.3f} [{rn.min():.3f}] | {gpi.mean():.3f} [{gpi.min():.3f}] | "
              f"{gpe.mean():.3f} [{gpe.min():.3f}] |")
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=5)
    ap.add_argument("--seed0", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="2 mm patients (quick look, not the target)")
    ap.add_argument("--cache", type=Path, help="keep patients/priors/QSMs here between runs")
    ap.add_argument("--qsm", choices=("truth", "recon", "both"), default="both")
    ap.add_argument("--robustness", action="store_true",
                    help="also the reconstructed QSM shifted, with less contrast, more noise and resampled to "
                         "0.8 x 0.8 x 1.6 mm voxels (a second table)")
    args = ap.parse_args(argv)
    inputs = ["truth", "recon"] if args.qsm == "both" else [args.qsm]
    rows = {inp: {m: {n: [] for n in NAMES.values()} for m in ("prior", "localized", "ours", "labels")}
            for inp in inputs}
    times = {inp: [] for inp in inputs}
    pallidum_times = {inp: [] for inp in inputs}
    per_patient = []
    robust = {}
    for seed in range(args.seed0, args.seed0 + args.patients):
        case = prepare(seed, args.small, args.cache, "recon" in inputs or args.robustness)
        if args.robustness:
            for variant, (chi_v, truth_v, prior_v) in variants(case, seed).items():
                seg = segment_nuclei(chi_v, prior_v)
                geo = (chi_v.ras_from_ijk, chi_v.voxel_mm)
                for m, lab in (("prior", prior_to_structures(prior_v.labels.data)), ("ours", seg.labelmap.data)):
                    for n, r in score(np.asarray(lab), truth_v, *geo).items():
                        robust.setdefault((variant, m, n[:-2]), []).append(r)
        truth = case["truth"]
        prior = prior_to_structures(case["prior"].labels.data)
        for inp in inputs:
            chi = case["chi_truth"] if inp == "truth" else case["chi_recon"]
            t0 = time.perf_counter()
            seg = segment_nuclei(chi, case["prior"])
            times[inp].append(time.perf_counter() - t0)
            pallidum_times[inp].append(seg.timings["pallidum_s"])
            geo = (chi.ras_from_ijk, chi.voxel_mm)
            with_labels = segment_nuclei(chi, case["prior"].labels)
            results = {"prior": score(prior, truth, *geo),
                       "localized": score(np.asarray(seg.localized.data), truth, *geo),
                       "ours": score(np.asarray(seg.labelmap.data), truth, *geo),
                       "labels": score(np.asarray(with_labels.labelmap.data), truth, *geo)}
            for m, res in results.items():
                for n, r in res.items():
                    rows[inp][m][n].append(r)
            per_patient.append((seed, inp, results, times[inp][-1],
                                [m for m in seg.messages if "noise" not in m]))

    print("\n## Segmentation benchmark: ours vs the CIT168 atlas prior alone "
          f"({args.patients} digital patients{' (2 mm)' if args.small else ''}; mean [worst])\n")
    head = ("| QSM | structure | Dice prior | Dice localized | Dice ours | Dice ours/labels | Dice ratio | "
            "HD95 prior mm | HD95 ours mm | ASSD prior mm | ASSD ours mm | ASSD ratio | centroid prior mm | "
            "centroid ours mm | centroid ratio |")
    print(head)
    print("|" + "|".join(["---"] * (head.count("|") - 1)) + "|")
    for inp in inputs:
        for n in list(NAMES.values()) + list(KINDS):
            names = [n] if n in NAMES.values() else [x for x in NAMES.values() if x.startswith(n + "_")]
            get = lambda m, i: np.array([r[i] for x in names for r in rows[inp][m][x]])  # noqa: E731
            dp, dl, do, db = get("prior", 0), get("localized", 0), get("ours", 0), get("labels", 0)
            hp, ho = get("prior", 1), get("ours", 1)
            cp, co = get("prior", 2), get("ours", 2)
            sp, so = get("prior", 3), get("ours", 3)
            label = n if n in NAMES.values() else f"**{n} (both sides)**"
            print(f"| {inp} | {label} | {dp.mean():.3f} [{dp.min():.3f}] | {dl.mean():.3f} [{dl.min():.3f}] | "
                  f"{do.mean():.3f} [{do.min():.3f}] | {db.mean():.3f} [{db.min():.3f}] | "
                  f"{do.mean() / dp.mean():.2f}x | "
                  f"{hp.mean():.2f} [{hp.max():.2f}] | {ho.mean():.2f} [{ho.max():.2f}] | "
                  f"{sp.mean():.2f} [{sp.max():.2f}] | {so.mean():.2f} [{so.max():.2f}] | "
                  f"{sp.mean() / max(so.mean(), 1e-9):.2f}x | {cp.mean():.2f} [{cp.max():.2f}] | "
                  f"{co.mean():.2f} [{co.max():.2f}] | {cp.mean() / max(co.mean(), 1e-9):.2f}x |")
    print()
    for inp in inputs:
        t = np.array(times[inp])
        tp = np.array(pallidum_times[inp])
        print(f"- {inp} χ: segment_nuclei wall time {t.mean():.1f} s mean, {t.max():.1f} s max "
              f"(target ≤ {TARGET_SECONDS:.0f} s), of which GPi/GPe {tp.mean():.1f} s mean, {tp.max():.1f} s max "
              f"(target ≤ {TARGET_PALLIDUM_SECONDS:.0f} s added)")
    if robust:
        print_robustness(robust)
    print("\nPer patient, ours (Dice STN_L/STN_R/SN_L/SN_R/RN_L/RN_R/GPi_L/GPi_R/GPe_L/GPe_R; centroid error mm "
          "STN L/R, GPi L/R, GPe L/R):\n")
    pal = ("GPi_L", "GPi_R", "GPe_L", "GPe_R")
    for seed, inp, res, t, msgs in per_patient:
        o = res["ours"]
        d = "/".join(f"{o[n][0]:.2f}" for n in NAMES.values())
        c = "/".join(f"{o[n][2]:.2f}" for n in ("STN_L", "STN_R")) + ", " + "/".join(f"{o[n][2]:.2f}" for n in pal)
        stn_ok = all(o[n][0] >= TARGET_DICE and o[n][2] <= TARGET_STN_CENTROID_MM for n in ("STN_L", "STN_R"))
        rest_ok = all(o[n][0] >= TARGET_DICE for n in ("SN_L", "SN_R", "RN_L", "RN_R"))
        pal_ok = all(o[n][0] >= TARGET_DICE and o[n][2] <= TARGET_PALLIDUM_CENTROID_MM for n in pal)
        print(f"- patient {seed} ({inp} χ): Dice {d}; centroid {c}; {t:.1f} s; "
              f"STN target {'met' if stn_ok else 'MISSED'}, SN/RN target {'met' if rest_ok else 'MISSED'}, "
              f"GPi/GPe target {'met' if pal_ok else 'MISSED'}"
              + (f"; guard rails: {'; '.join(msgs)}" if msgs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
