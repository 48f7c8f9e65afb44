"""Registration benchmark: ``qsmplanner register`` vs itk-elastix (default rigid map) vs ANTs (Rigid),
all three as command-line programs in ONE run (wall time includes reading and writing), one table.

Heads (with skull, scalp fat, face and neck):
- "real": the pydeface 2.1.0 mean head T1 (MIT; a real MR average head with skull, face and neck,
  176x256x256 ~1 mm), when pydeface is installed (bench extras);
- "dp": the digital patient (seed 0): its own GRE magnitude, GRE slab and CT against its T1.
Moving images of the real head (phantom.realistic): GRE-like contrast (CSF bright, bone dark), slice
profile, receive bias field, Rician noise; CT-like (skull from the T1). Known poses; TRE = distance
between the true and the estimated position of brain points (inside the moving field of view) and of
both STNs, in T1 RAS mm. "t/elx" = wall time / elastix's on the same case.
ANTs: antspyx ``registration(type_of_transform="Rigid")`` with the rigid stage of
antsRegistrationSyNQuick.sh (1000x500x250x0 iterations) instead of its 2100x1200x1200x10 default,
seeded and on one thread (antspyx ``config.set_ants_deterministic``: its rows repeat run to run; its
wall time is single-threaded).
Atlas rows: ``normalize_to_mni`` on T1s with skull, neck and bias field: the digital patients (STN
centroid vs their true labels) and the real head (2 mm copy) warped by a known affine with a bias
field (STN centroid vs the unwarped head's, carried by the known affine).
Usage: .venv/bin/python bench/registration.py [--skip-atlas] [--only real|dp] [--methods ours,elastix,ants]
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "QSMPlanner"))
from QSMPlannerLib.io.volumes import read_volume, write_volume  # noqa: E402
from QSMPlannerLib.phantom import realistic  # noqa: E402
from QSMPlannerLib.registration import read_transform  # noqa: E402
from QSMPlannerLib.registration.atlas import brain_mask  # noqa: E402

# CIT168 STN centroids in the pydeface mean head (T1 RAS mm), from normalize_to_mni on its 2 mm copy
# (Testing/Data/real-head; checked on the slices: beside the midbrain, below the thalamus)
REAL_STN = {"STN_L": (-14.2, 6.4, -10.1), "STN_R": (4.0, 5.3, -10.0)}
GRE_VOXEL = (0.9, 0.9, 2.0)
GRE_FOV = (230.0, 230.0, 170.0)
# (name, kind, rotation deg about R/A/S, shift mm, slab thickness mm or None, slab tilt deg)
REAL_CASES = [
    ("real 4deg/5mm", "gre", (3.0, -2.0, 1.5), (3.0, -3.0, 2.5), None, 0.0),
    ("real 15deg/20mm", "gre", (10.0, 8.0, -7.0), (-12.0, 12.0, 10.0), None, 0.0),
    ("real 30deg/40mm", "gre", (-20.0, 18.0, 12.0), (25.0, 25.0, -20.0), None, 0.0),
    ("real slab 60mm obl", "gre", (6.0, -4.0, 3.0), (5.0, -8.0, 6.0), 60.0, 20.0),
    ("real slab 40mm obl", "gre", (-8.0, 5.0, 6.0), (-6.0, 10.0, -5.0), 40.0, -15.0),
    ("real slab 30mm ax", "gre", (5.0, 3.0, -4.0), (4.0, 6.0, 8.0), 30.0, 0.0),
    ("real CT 10deg/15mm", "ct", (8.0, -5.0, 4.0), (10.0, -8.0, 7.0), None, 0.0),
]
DP_CASES = [("dp GRE", "gre", None), ("dp GRE 30deg/40mm", "gre", ((-20.0, 18.0, 12.0), (25.0, 25.0, -20.0))),
            ("dp slab 40mm obl", "slab", None), ("dp CT", "ct", None)]


def tre(est, truth, pts):
    """|est(p) - truth(p)| for moving-world points p = inv(truth)(pts), pts in the fixed world."""
    moving_pts = pts @ np.linalg.inv(truth)[:3, :3].T + np.linalg.inv(truth)[:3, 3]
    return np.linalg.norm(moving_pts @ est[:3, :3].T + est[:3, 3] - pts, axis=1)


def in_fov(moving, fixed_from_moving, pts, inset_mm=5.0):
    ijk = (pts - fixed_from_moving[:3, 3]) @ np.linalg.inv(fixed_from_moving[:3, :3]).T
    ijk = (ijk - moving.ras_from_ijk[:3, 3]) @ np.linalg.inv(moving.ras_from_ijk[:3, :3]).T
    inset = inset_mm / moving.voxel_mm
    return np.all((ijk >= inset) & (ijk <= np.array(moving.shape3) - 1 - inset), axis=1)


def real_cases():
    import importlib.resources
    try:
        path = importlib.resources.files("pydeface") / "data" / "mean_reg2mean.nii.gz"
    except ModuleNotFoundError:
        print("pydeface not installed: the real head is skipped")
        return
    t1 = read_volume(str(path))
    t1 = t1.with_data(np.asarray(t1.data, np.float32), name="T1")
    brain = np.asarray(brain_mask(t1).data) > 0
    brain_pts = t1.voxel_ras_grid()[brain][::97]
    centre = brain_pts.mean(0)
    stn = np.array(list(REAL_STN.values()))
    rng = np.random.default_rng(7)
    for name, kind, angles, shift, slab, tilt in REAL_CASES:
        # pose about the brain centre: t1_from_moving
        pose = realistic.pose_matrix(angles, shift)
        pose[:3, 3] += centre - pose[:3, :3] @ centre
        grid_centre = stn.mean(0) + (0, 0, 4.0) if slab else centre + (0, 0, -10.0)
        grid_centre = np.linalg.inv(pose)[:3, :3] @ grid_centre + np.linalg.inv(pose)[:3, 3]
        if kind == "gre":
            grid = realistic.slab_grid(grid_centre, GRE_VOXEL, GRE_FOV, slab, tilt)
            moving = realistic.gre_like(t1, grid, pose, rng)
        else:
            grid = realistic.slab_grid(grid_centre, (0.6, 0.6, 1.0), (250.0, 250.0, 200.0))
            moving = realistic.ct_like(t1, grid, pose, rng, brain)
        yield name, t1, moving, pose, brain_pts[in_fov(moving, pose, brain_pts)], stn


def dp_cases():
    from QSMPlannerLib.phantom import make_patient
    patient = make_patient(seed=0)
    t1 = patient.t1
    brain = patient.labels_t1.data > 0
    brain &= patient.labels_t1.data < 210
    brain_pts = t1.voxel_ras_grid()[brain][::97]
    stn = np.array([patient.stn_centroids["STN_L"], patient.stn_centroids["STN_R"]])
    mag = patient.gre.magnitude[..., 0]
    gre = patient.t1.with_data(mag)
    gre = type(t1)(np.asarray(mag, np.float32), patient.gre.ras_from_ijk, "GRE")
    for name, kind, extra in DP_CASES:
        if kind == "ct":
            moving, pose = patient.ct, patient.transforms["t1_from_ct"]
        else:
            moving, pose = gre, patient.transforms["t1_from_gre"]
            if kind == "slab":  # the central 40 mm of the (oblique) GRE around the STNs
                k = moving.ras_to_ijk(pose[:3, :3].T @ (stn.mean(0) - pose[:3, 3]))[2]
                n = int(round(40.0 / moving.voxel_mm[2]))
                k0 = int(np.clip(round(k - n / 2), 0, moving.shape3[2] - n))
                m = moving.ras_from_ijk.copy()
                m[:3, 3] += m[:3, 2] * k0
                moving = type(t1)(np.ascontiguousarray(moving.data[:, :, k0:k0 + n]), m, "GRE slab")
            if extra is not None:  # the GRE world moved: points of the new world go back first
                move = realistic.pose_matrix(*extra)
                moving = type(t1)(moving.data, move @ moving.ras_from_ijk, moving.name)
                pose = pose @ np.linalg.inv(move)
        yield name, t1, moving, pose, brain_pts[in_fov(moving, pose, brain_pts)], stn


def run_method(method, fixed_path, moving_path, work):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "QSMPlanner"))
    if method == "ours":
        out = work / "ours.h5"
        cmd = [sys.executable, "-m", "QSMPlannerLib.cli", "register", "--fixed", str(fixed_path),
               "--moving", str(moving_path), "--out-transform", str(out)]
    else:
        out = work / f"{method}.txt"
        cmd = [sys.executable, str(ROOT / "bench" / "_peer_register.py"), method, str(fixed_path),
               str(moving_path), str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return None, dt, f"exit {proc.returncode}: {lines[-1] if lines else ''}"[:240]
    est = read_transform(out) if method == "ours" else np.loadtxt(out)
    return est, dt, "roles swapped after a refusal" if "swapped roles" in proc.stderr else ""


def main():
    args = sys.argv[1:]
    only = args[args.index("--only") + 1] if "--only" in args else None
    methods = args[args.index("--methods") + 1].split(",") if "--methods" in args else ["ours", "elastix", "ants"]
    for m, mod in (("elastix", "itk"), ("ants", "ants")):
        if m in methods:
            try:
                __import__(mod)
            except ImportError:
                print(f"{m} not installed: skipped")
                methods.remove(m)
    rows, notes = [], []
    load_start = os.getloadavg()
    sources = [s for s in (("real", real_cases), ("dp", dp_cases)) if only in (None, s[0])]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _, source in sources:
            for name, fixed, moving, pose, pts, stn in source():
                fixed_path, moving_path = work / "fixed.nii.gz", work / "moving.nii.gz"
                write_volume(fixed, fixed_path)
                write_volume(moving, moving_path)
                for method in methods:
                    est, dt, err = run_method(method, fixed_path, moving_path, work)
                    if err:
                        notes.append(f"{name} {method}: {err}")
                    if est is None:
                        rows.append((name, method, np.nan, np.nan, np.nan, dt))
                    else:
                        e, s = tre(est, pose, pts), tre(est, pose, stn)
                        rows.append((name, method, e.mean(), e.max(), s.max(), dt))
                    print(f"  {name:22s} {method:8s} " + " ".join(f"{v:7.3f}" for v in rows[-1][2:]),
                          file=sys.stderr, flush=True)
    load = f"load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (2 cores)"
    print(f"\nRigid registration ({load}), TRE in T1 RAS mm at brain points in the moving field of view and at both "
          "STNs;\nCLI wall time incl. reading/writing (targets: mean <= 0.10 and <= elastix, max <= 0.25, "
          "time <= elastix)")
    print(f"{'case':22s} {'method':8s} {'mean':>7s} {'max':>7s} {'STNmax':>7s} {'wall s':>7s} "
          f"{'mean/elx':>8s} {'t/elx':>6s}")
    for r in rows:
        ref = [x for x in rows if x[0] == r[0] and x[1] == "elastix"]
        tr = r[5] / ref[0][5] if ref else float("nan")
        mr = r[2] / ref[0][2] if ref and np.isfinite(ref[0][2]) else float("nan")
        cells = "".join(f" {v:7.3f}" if np.isfinite(v) else "  failed" for v in r[2:5])
        print(f"{r[0]:22s} {r[1]:8s}{cells} {r[5]:7.1f} {mr:8.2f} {tr:6.2f}")
    for n in notes:
        print("  " + n)
    if "--skip-atlas" not in args:
        atlas()


def atlas():
    """Atlas prior on heads with skull, neck and bias field (see the module docstring)."""
    from QSMPlannerLib.phantom import make_patient
    from QSMPlannerLib.registration import normalize_to_mni, resample
    load_start = os.getloadavg()
    rows = []
    for seed in (0, 1, 2):
        patient = make_patient(seed=seed)
        t = time.perf_counter()
        warped = normalize_to_mni(patient.t1).warp_labels(patient.t1)
        dt = time.perf_counter() - t
        cells = []
        for v in (16, 116):
            a, b = patient.labels_t1.data == v, warped.data == v
            c = [patient.t1.ijk_to_ras(np.argwhere(x).mean(0)) for x in (a, b)]
            cells += [np.linalg.norm(c[0] - c[1]), 2 * (a & b).sum() / (a.sum() + b.sum())]
        rows.append((f"dp seed {seed}", *cells, dt))
    t1 = read_volume(str(ROOT / "QSMPlanner" / "Testing" / "Data" / "real-head" / "mean_head_2mm.nii.gz"))
    t1 = t1.with_data(np.asarray(t1.data, np.float32), name="T1")
    moved_from_t1 = realistic.pose_matrix((6.0, -4.0, 5.0), (5.0, -6.0, 4.0))
    moved_from_t1[:3, :3] = moved_from_t1[:3, :3] @ np.diag([1.04, 0.97, 1.02])
    moved = resample(t1, t1, moved_from_t1)
    field = realistic.bias_field(t1.shape3, np.random.default_rng(3), 0.4)
    moved = moved.with_data((moved.data * field).astype(np.float32))
    stn = []
    for image in (t1, moved):
        t = time.perf_counter()
        labels = normalize_to_mni(image).warp_labels(t1)
        dt = time.perf_counter() - t
        stn.append([t1.ijk_to_ras(np.argwhere(labels.data == v).mean(0)) for v in (16, 116)])
    err = [np.linalg.norm(moved_from_t1[:3, :3] @ a + moved_from_t1[:3, 3] - b) for a, b in zip(*stn)]
    rows.append(("real head", err[0], np.nan, err[1], np.nan, dt))
    load = f"load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    print(f"\nAtlas normalisation on T1s with skull, neck, bias field ({load}; target: STN centroid error "
          "<= 1.0 mm;\nthe real head: vs its unwarped self carried by the known affine, no true labels)")
    print(f"{'head':10s} {'STN_L mm':>9s} {'STN_R mm':>9s} {'Dice L':>7s} {'Dice R':>7s} {'time s':>7s}")
    for name, el, dl, er, dr, dt in rows:
        cells = "".join(f" {v:>{w}.3f}" if np.isfinite(v) else f" {'-':>{w}s}" for v, w in
                        ((el, 9), (er, 9), (dl, 7), (dr, 7)))
        print(f"{name:10s}{cells} {dt:7.1f}")


if __name__ == "__main__":
    main()
