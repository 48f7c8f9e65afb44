"""QSM benchmark: our pipeline vs a plain baseline (Laplacian unwrapping + V-SHARP + TKD) on the digital
patient (3 T, 5 echoes, background field) in two poses (axial, 15 deg oblique) and two seeds, one run;
scikit-image's ``unwrap_phase`` against our quality-guided unwrapping for the unwrapping stage alone.

Scores: the ``qsm-ci`` challenge metrics (NRMSE %, HFEN %, XSIM, correlation) over the TRUE brain mask
(eroded voxels count as 0, as the challenge does), the mean chi error (ppm) in STN, SN, RN and GP per side
(both maps referenced to their mean in the brain mask), wall time per stage and peak memory (process RSS).
Real crop (../shared/data/real-phase): residual 2*pi jumps, agreement with skimage up to a global 2*pi*k.

    .venv/bin/python bench/qsm.py                  # default-size patient, seeds 0 1, tilts 0 15
    .venv/bin/python bench/qsm.py --also --repeat 3  # the default config vs the old speed settings, fastest of 3
    .venv/bin/python bench/qsm.py --small --seeds 0 --tilts 0
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))
from QSMPlannerLib.qsm import reconstruct_qsm  # noqa: E402
from QSMPlannerLib.qsm import bgremove, inversion  # noqa: E402
from QSMPlannerLib.qsm.dipole import hz_to_ppm  # noqa: E402
from QSMPlannerLib.qsm.mask import brain_mask  # noqa: E402
from QSMPlannerLib.qsm.romeo import quality_unwrap  # noqa: E402
from QSMPlannerLib.qsm.unwrap import laplacian_unwrap  # noqa: E402

REAL_DIR = next((d for d in (Path("/work/shared/data/real-phase"),
                             Path(__file__).resolve().parents[1] / "QSMPlanner/Testing/Data/real-phase")
                 if (d / "small_Phase.nii").exists()), None)
ROIS = {"STN": ((16,), (116,)), "SN": ((7, 9), (107, 109)), "RN": ((8,), (108,)),
        "GP": ((5, 6), (105, 106))}


class PeakRSS:
    """Samples this process's resident memory every 20 ms while active (GiB)."""

    def __enter__(self):
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2 ** 30

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def warm_up():
    """One small reconstruction (ours in both settings, and the baseline) before anything is timed: numba
    compiles its loops on the first call after an install or a source change (cached after that)."""
    from QSMPlannerLib.qsm.simulate import simulate_head
    gre = simulate_head(shape=(48, 48, 40)).gre
    reconstruct_qsm(gre)
    with previous_defaults():
        reconstruct_qsm(gre)
    baseline(gre)


@contextlib.contextmanager
def previous_defaults():
    """Our pipeline with the speed settings it had before 2026-12-07 (the rest of the code as now): PDF
    padded by 1/10 of each size (>= 8 voxels), TV padded by 8 voxels, rho = 100 lam, 16 TV iterations
    in every pass. For the table's 'ours, old speed settings' rows: speed at equal accuracy, one run."""
    from QSMPlannerLib.qsm import pipeline
    saved = bgremove.pdf_fit, inversion.tv_admm_fit, pipeline.TV_ITERATIONS_REFIT

    def pdf_fit(field, mask, *a, **k):
        k.setdefault("pad", tuple(max(8, n // 10) for n in np.shape(mask)))
        return saved[0](field, mask, *a, **k)

    def tv_admm_fit(*a, **k):
        lam = k.get("lam") or 2e-3
        k.update(pad=8, rho=100 * lam)
        return saved[1](*a, **k)
    bgremove.pdf_fit, inversion.tv_admm_fit, pipeline.TV_ITERATIONS_REFIT = pdf_fit, tv_admm_fit, 16
    try:
        yield
    finally:
        bgremove.pdf_fit, inversion.tv_admm_fit, pipeline.TV_ITERATIONS_REFIT = saved


def baseline(gre):
    """Plain baseline: magnitude mask, Laplacian unwrapping of every echo, magnitude-weighted linear fit
    (slope and intercept), V-SHARP, TKD (0.15), whole-brain mean reference. Returns (chi, timings)."""
    timings = {}
    vox = gre.voxel_mm
    mag = gre.magnitude.astype(np.float32)
    t = time.perf_counter()
    m = brain_mask(np.sqrt((mag ** 2).sum(3)), vox)
    timings["mask"] = time.perf_counter() - t
    t = time.perf_counter()
    te = np.asarray(gre.te_s, np.float32)
    u = np.stack([laplacian_unwrap(gre.phase_rad[..., e], vox) for e in range(gre.n_echoes)], axis=3)
    w = mag ** 2
    wsum = np.maximum(w.sum(3), 1e-30)
    tm = (w * te).sum(3) / wsum
    pm = (w * u).sum(3) / wsum
    slope = (w * (te - tm[..., None]) * (u - pm[..., None])).sum(3) / np.maximum(
        (w * (te - tm[..., None]) ** 2).sum(3), 1e-30)
    field = hz_to_ppm(slope / (2 * np.pi), gre.b0_tesla).astype(np.float32)
    timings["field"] = time.perf_counter() - t
    t = time.perf_counter()
    local, m2 = bgremove.vsharp(field, m, vox)
    timings["bfr"] = time.perf_counter() - t
    t = time.perf_counter()
    chi = inversion.tkd(local, m2, vox, gre.b0_dir_ijk)
    chi = np.where(m2, chi - chi[m2].mean(), 0).astype(np.float32)
    timings["inversion"] = time.perf_counter() - t
    timings["total"] = sum(timings.values())
    return chi, timings


def score(chi, patient):
    from qsm_ci.qsm_eval import score_arrays
    truth = patient.truth["chi_ppm"].data.astype(np.float64)
    mask = patient.truth["brain_mask"].data > 0
    labels = patient.truth["labels_gre"].data
    metrics, _ = score_arrays(chi.astype(np.float64), truth, mask.astype(np.uint8))
    rec = np.where(mask, chi - chi[mask].mean(), 0)
    tru = np.where(mask, truth - truth[mask].mean(), 0)
    for name, sides in ROIS.items():
        for side, values in zip("LR", sides):
            roi = np.isin(labels, values) & mask
            metrics[f"{name}_{side}"] = float(rec[roi].mean() - tru[roi].mean()) if roi.any() else np.nan
            if roi.any():  # as read against the surrounding tissue (a 3-10 mm shell around the nucleus)
                metrics[f"{name}_{side}_loc"] = _local_contrast_error(rec, tru, roi, mask)
    metrics.update(_reference_errors(rec, tru, labels, mask))
    return metrics


def _local_contrast_error(rec, tru, roi, mask):
    """Error of (nucleus mean - mean of the 3-10 mm shell around it, inside the mask), ppm."""
    from scipy import ndimage
    box = tuple(slice(max(0, a.min() - 12), a.max() + 13) for a in np.nonzero(roi))
    r, m = roi[box], mask[box]
    shell = ndimage.binary_dilation(r, iterations=10) & ~ndimage.binary_dilation(r, iterations=3) & m
    return float((rec[box][r].mean() - rec[box][shell].mean()) - (tru[box][r].mean() - tru[box][shell].mean()))


def _reference_errors(rec, tru, labels, mask):
    """Mean chi error of white matter and CSF (both maps at their brain mean), and the slope of the
    nucleus means (ours against truth; 1 = no contrast loss)."""
    out = {}
    for name, values in (("WM", (203,)), ("CSF", (201,))):  # phantom.anatomy labels
        sel = np.isin(labels, values) & mask
        out[name] = float(rec[sel].mean() - tru[sel].mean()) if sel.any() else np.nan
    pairs = [(tru[s].mean(), rec[s].mean()) for vals in ROIS.values() for v in vals
             for s in [np.isin(labels, v) & mask] if s.any()]
    if len(pairs) > 1:
        t, r = np.array(pairs).T
        out["dgm_slope"] = float(np.polyfit(t, r, 1)[0])
    return out


def unwrap_stage(patient, small_mask):
    """Unwrap the echo-2/echo-1 phase difference inside the brain mask with ours and with scikit-image;
    its truth is known exactly (2*pi*field_Hz*dTE): fraction of voxels off by a 2*pi jump."""
    from skimage.restoration import unwrap_phase
    gre = patient.gre
    dphi = np.angle(np.exp(1j * (gre.phase_rad[..., 1] - gre.phase_rad[..., 0]))).astype(np.float32)
    true_ppm = patient.truth["total_field_ppm"].data
    true_dphi = 2 * np.pi * true_ppm * 1e-6 * 42.577478518e6 * gre.b0_tesla * (gre.te_s[1] - gre.te_s[0])
    m = small_mask
    rows = {}
    weight = np.sqrt(gre.magnitude[..., 0] * gre.magnitude[..., 1])
    for name, fn in (("ours (quality-guided)", lambda: quality_unwrap(dphi, weight, m)),
                     ("skimage unwrap_phase",
                      lambda: unwrap_phase(np.ma.array(dphi, mask=~m)).filled(0).astype(np.float32))):
        t = time.perf_counter()
        u = fn()
        dt = time.perf_counter() - t
        k = (u - true_dphi)[m] / (2 * np.pi)
        k0 = np.round(np.median(k))
        rows[name] = (dt, float(np.mean(np.abs(k - k0) > 0.5)))
    return rows


def _jumps(u, m):
    """Neighbour pairs inside ``m`` differing by more than pi (residual 2*pi jumps)."""
    n = 0
    for a in range(3):
        hi, lo = [slice(None)] * 3, [slice(None)] * 3
        hi[a], lo[a] = slice(1, None), slice(None, -1)
        both = m[tuple(hi)] & m[tuple(lo)]
        n += int((np.abs(u[tuple(hi)] - u[tuple(lo)])[both] > np.pi).sum())
    return n


def real_crop_stage(data_dir: Path):
    """Real 3-echo crop (ROMEO.jl test data, TE 4/8/12 ms), in the pipeline's brain mask (magnitude,
    then phase quality): per echo, neighbour pairs differing by > pi in the wrapped input, ours,
    skimage and the echo fit's offset-free unwrapped echo (at late echoes a steep true field can
    exceed pi per voxel); the same for the fitted field as phase at TE1 (2*pi*f*TE1, where every
    residual pair is an error); and the fraction of mask voxels where ours equals skimage up to one
    global 2*pi*k."""
    from skimage.restoration import unwrap_phase

    from QSMPlannerLib.io import load_gre
    from QSMPlannerLib.qsm.echo import combine_echoes
    from QSMPlannerLib.qsm.mask import quality_mask
    gre = load_gre(mag=[data_dir / "small_Mag.nii"], phase=[data_dir / "small_Phase.nii"],
                   te=[4e-3, 8e-3, 12e-3], b0=3.0)
    m = brain_mask(gre.rss_magnitude().data, gre.voxel_mm)
    fit = combine_echoes(gre.magnitude, gre.phase_rad, gre.te_s, m, gre.voxel_mm)
    m = quality_mask(m, fit.residual_rad)
    field_te1 = 2 * np.pi * fit.field_hz * gre.te_s[0]
    rows = []
    for e in range(gre.n_echoes):
        p = np.asarray(gre.phase_rad[..., e], np.float32)
        t = time.perf_counter()
        u = quality_unwrap(p, gre.magnitude[..., e], m)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        s = unwrap_phase(np.ma.array(p, mask=~m)).filled(0)
        t_sk = time.perf_counter() - t
        k = (u - s)[m] / (2 * np.pi)
        agree = float(np.mean(np.abs(k - np.round(np.median(k))) < 1e-3))
        rows.append((e + 1, int(m.sum()), _jumps(p, m), _jumps(u, m), _jumps(s, m),
                     _jumps(fit.unwrapped_rad[..., e], m), _jumps(field_te1, m), agree, t_ours, t_sk))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="2 mm patient (quick check)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--tilts", type=float, nargs="+", default=[0.0, 15.0])
    ap.add_argument("--bfr", default="pdf", help="our background removal (default pdf)")
    ap.add_argument("--also", nargs="*", default=["vsharp:tv", "pdf:tv:1"],
                    help="extra configs of ours, bfr:inversion[:passes] (passes: PDF background refits)")
    ap.add_argument("--real", type=Path, default=REAL_DIR, help="real 3-echo crop directory ('' to skip)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every config this many times (interleaved) and keep the fastest run")
    ap.add_argument("--no-before", dest="before", action="store_false",
                    help="skip the 'ours, old speed settings' rows (speed settings before 2026-12-07)")
    args = ap.parse_args(argv)
    from QSMPlannerLib.phantom import make_patient

    warm_up()
    rows, unwrap_rows = [], []
    for seed in args.seeds:
        for tilt in args.tilts:
            t = time.perf_counter()
            patient = make_patient(seed=seed, small=args.small, tilt_deg=tilt)
            print(f"# patient seed {seed} tilt {tilt:g}: {patient.gre.shape3}x{patient.gre.n_echoes} "
                  f"({time.perf_counter() - t:.0f} s to simulate)", file=sys.stderr, flush=True)
            case = f"s{seed} {'axial' if tilt == 0 else f'{tilt:g}deg'}"
            configs = [(f"ours {args.bfr}+tv default", dict(bfr=args.bfr, inversion="tv"))]  # pdf: x2 refit
            if args.before:
                configs.append(("ours, old speed settings", dict(bfr=args.bfr, inversion="tv", before=True)))
            for c in args.also:
                parts = c.split(":")
                kw = dict(bfr=parts[0], inversion=parts[1], bfr_passes=int(parts[2]) if len(parts) > 2 else 1)
                configs.append((f"ours {parts[0]}+{parts[1]}" + (f" x{parts[2]}" if len(parts) > 2 else ""), kw))
            best = {}   # name -> (wall, chi, timings, peak RSS): the fastest of the repeats
            for _ in range(args.repeat):   # configs interleaved: load changes hit them alike
                for name, kw in configs:
                    kw = dict(kw)
                    with (previous_defaults() if kw.pop("before", False) else contextlib.nullcontext()), \
                            PeakRSS() as mem:
                        t = time.perf_counter()
                        res = reconstruct_qsm(patient.gre, **kw)
                        wall = time.perf_counter() - t  # the whole call: checks and copies included
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, res.chi_ppm.data, dict(res.timings, total=wall), mem.peak)
                    print(f"#   {name}: {wall:.1f} s (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
                with PeakRSS() as mem:
                    t = time.perf_counter()
                    chi, timings = baseline(patient.gre)
                    timings["total"] = wall = time.perf_counter() - t
                if "baseline" not in best or wall < best["baseline"][0]:
                    best["baseline"] = (wall, chi, timings, mem.peak)
            for name, _ in configs:
                _, chi, timings, peak = best[name]
                rows.append((case, name, score(chi, patient), timings, peak))
            _, chi, timings, peak = best["baseline"]
            rows.append((case, "baseline lap+vsharp+tkd", score(chi, patient), timings, peak))
            del best
            mask = res.brain_mask.data > 0
            for name, (dt, frac) in unwrap_stage(patient, mask).items():
                unwrap_rows.append((case, name, dt, frac))

    hdr = (f"{'case':<10} {'method':<24} {'NRMSE%':>7} {'HFEN%':>7} {'XSIM':>6} {'corr':>6} {'cover':>6} "
           + " ".join(f"{r + s:>7}" for r in ROIS for s in ("_L", "_R"))
           + f" {'mask':>5} {'field':>6} {'bfr':>6} {'inv':>6} {'total s':>7} {'peakGiB':>7}")
    print("\nchi vs truth in the true brain mask (ROI columns: mean chi error, ppm)")
    print(hdr)
    for case, name, met, tim, peak in rows:
        print(f"{case:<10} {name:<24} {met['nrmse']:7.1f} {met['hfen']:7.1f} {met['xsim']:6.3f} "
              f"{met['correlation']:6.3f} {met['coverage']:6.3f} "
              + " ".join(f"{met[f'{r}_{s}']:+7.3f}" for r in ROIS for s in "LR")
              + f" {tim.get('mask', 0):5.1f} {tim.get('field', 0):6.1f} {tim.get('bfr', 0):6.1f} "
              f"{tim.get('inversion', 0):6.1f} {tim['total']:7.1f} {peak:7.2f}")
    print("\nreferencing: WM and CSF mean error (brain-mean reference), slope of nucleus means vs truth, and the"
          " nucleus errors read against the surrounding 3-10 mm shell (as a clinician compares a nucleus with"
          " its neighbourhood), ppm")
    print(f"{'case':<10} {'method':<24} {'WM':>7} {'CSF':>7} {'slope':>6} "
          + " ".join(f"{r + s:>7}" for r in ROIS for s in ("_L", "_R")) + f" {'max':>6}")
    for case, name, met, tim, peak in rows:
        loc = [met.get(f"{r}_{s}_loc", np.nan) for r in ROIS for s in "LR"]
        print(f"{case:<10} {name:<24} {met.get('WM', np.nan):+7.3f} {met.get('CSF', np.nan):+7.3f} "
              f"{met.get('dgm_slope', np.nan):6.3f} " + " ".join(f"{x:+7.3f}" for x in loc)
              + f" {np.nanmax(np.abs(loc)):6.3f}")
    print("\nunwrapping stage alone (echo2-echo1 phase in the brain mask; truth known)")
    print(f"{'case':<10} {'method':<24} {'time s':>7} {'voxels off by 2pi':>18}")
    for case, name, dt, frac in unwrap_rows:
        print(f"{case:<10} {name:<24} {dt:7.2f} {frac:18.5f}")

    if args.real is not None and str(args.real) not in ("", "."):
        print("\nreal crop (3 echoes): residual 2pi jumps inside the brain mask; ours vs skimage up to 2pi*k")
        print(f"{'echo':>4} {'mask vox':>8} {'wrapped':>8} {'ours':>5} {'skimage':>7} {'echo-fit':>8} "
              f"{'field@TE1':>9} {'agree':>8} {'ours s':>7} {'skim s':>7}")
        for e, n, jw, jo, js, jf, jt, agree, to, ts in real_crop_stage(Path(args.real)):
            print(f"{e:>4} {n:>8} {jw:>8} {jo:>5} {js:>7} {jf:>8} {jt:>9} {agree:8.5f} {to:7.2f} {ts:7.2f}")

    print("\nratios per config of ours: NRMSE ours/baseline (target <= 0.6), time ours/baseline and ours/15 s, "
          "max |ROI error| (target <= 0.01 ppm)")
    by = {(c, n): (m, t) for c, n, m, t, _ in rows}
    base = "baseline lap+vsharp+tkd"
    ours_names = [n for n in dict.fromkeys(n for _, n, *_ in rows) if n != base]
    for case in dict.fromkeys(c for c, *_ in rows):
        b, tb = by[(case, base)]
        for name in ours_names:
            o, to = by[(case, name)]
            print(f"{case:<10} {name:<24} NRMSE x{o['nrmse'] / b['nrmse']:.3f}   time {to['total']:5.1f} s "
                  f"(x{to['total'] / tb['total']:.2f} of baseline, x{to['total'] / 15:.2f} of 15 s)   "
                  f"max |ROI| {max(abs(o[f'{r}_{s}']) for r in ROIS for s in 'LR'):.4f} ppm")
    for seed in args.seeds:
        ax, ob = f"s{seed} axial", next((c for c in by if c[0].startswith(f"s{seed} ") and "deg" in c[0]), None)
        for name in ours_names:
            if (ax, name) in by and ob is not None:
                ratio = by[(ob[0], name)][0]["nrmse"] / by[(ax, name)][0]["nrmse"]
                print(f"s{seed}: oblique/axial NRMSE of {name} {ratio:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
