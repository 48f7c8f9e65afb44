"""Frame-registration benchmark: `qsmplanner frame` on real-like synthetic stereotactic CTs.

One run, one table. Every frame system (Leksell G, CRW, BRW) x slice thickness (0.5, 1.0, 2.5 mm with a
12 degree gantry tilt), rods cut by the scan, rods departing 0.1 mm (SD per end coordinate) from the model,
plus a head CT without any frame and a CT with all the frame's clutter but no localizer. Each CT is
512 x 512 in-plane (0.49 mm pixels for the Leksell G and CRW, 0.63 mm for the BRW ring), int16 HU, with
a head (scalp, skull, jaw, brain, ventricles, neck), contrast-enhanced vessels (in the brain, on the
scalp, and contrast-filled tubing beside the rods), dental metal with streaks, four pins and posts, the
base ring, the head holder and the table, the localizer's acrylic plates, a 0.4 mm PSF and 15 HU noise,
the frame at a known pose. Each case runs the command line (`python -m QSMPlannerLib.cli frame`) in its
own process on a NIfTI file: time is its wall clock, memory its peak resident set (os.wait4).

Columns: TRE = worst true error at the two STN targets (frame RAS (+-12, -2.5, -4) mm); FRE and the worst
fiducial (mm); predicted TRE at the STN; N fiducials; time; peak memory; exit status and the frame found
(or the one line of a refusal). Ratios to the issue's targets: TRE / 0.1 mm, FRE / 0.3 mm, time / 30 s,
memory / 2 GiB. The machine's load average is printed (2 cores shared with other work).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "QSMPlanner"))
from QSMPlannerLib.io.volumes import write_volume  # noqa: E402
from QSMPlannerLib.stereotaxy import Clutter, frame_ct_grid, frame_pose, render_frame_ct  # noqa: E402
from QSMPlannerLib.stereotaxy.geometry import apply  # noqa: E402

STN_FRAME = np.array([[12.0, -2.5, -4.0], [-12.0, -2.5, -4.0]])
PIXEL = {"leksell": 0.49, "crw": 0.49, "brw": 0.63}
POSE = ([4.0, -3.0, 5.0], [2.0, -3.0, 4.0])
# name, system, slice mm, slices, gantry tilt deg, S window (None: centred on the rods), rod departure mm,
# plates (None: the localizer), clutter (False: head only)
CASES = []
for key in ("leksell", "crw", "brw"):
    CASES += [(f"{key} 0.5 mm", key, 0.5, 400, 0.0, None, 0.0, None, True),
              (f"{key} 1.0 mm", key, 1.0, 220, 0.0, None, 0.0, None, True),
              (f"{key} 2.5 mm tilt 12", key, 2.5, 90, 12.0, None, 0.0, None, True),
              (f"{key} 1.0 mm rods cut", key, 1.0, 70, 0.0, (-30.0, 40.0), 0.0, None, True),
              (f"{key} 0.5 mm rods 0.1 off", key, 0.5, 400, 0.0, None, 0.1, None, True)]
CASES += [("head CT, no frame", "leksell", 0.5, 400, 0.0, None, 0.0, (), False),
          ("clutter, no localizer", "brw", 0.5, 400, 0.0, None, 0.0, (), True)]


def make_ct(system, slice_mm, slices, tilt, window, jitter, plates, clutter, seed):
    voxel = (PIXEL[system], PIXEL[system], slice_mm)
    ras_from_ijk, shape = frame_ct_grid(system, voxel, shape=(512, 512, slices), tilt_deg=tilt,
                                        s_range_mm=window)
    if window is not None:
        shape = (512, 512, int(round((window[1] - window[0]) / slice_mm)) + 1)
        ras_from_ijk, shape = frame_ct_grid(system, voxel, shape=shape, s_range_mm=window)
    truth = frame_pose(*POSE)
    cl = Clutter() if clutter else Clutter(vessels=0, dental_metal=False, pins=False, posts=False, ring=False,
                                           head_holder=False, plates=False)
    ct = render_frame_ct(ras_from_ijk, shape, truth, system, clutter=cl, noise_hu=15.0, rng=seed,
                         dtype=np.int16, psf_mm=0.4, rod_jitter_mm=jitter, plates=plates)
    return ct, truth


def run_cli(ct_path, out_json, target_ras):
    """(exit status, wall s, peak RSS bytes, stdout, stderr) of `qsmplanner frame` in its own process."""
    cmd = [sys.executable, "-m", "QSMPlannerLib.cli", "frame", "--ct", str(ct_path), "--out", str(out_json),
           "--target=" + ",".join(f"{v:.4f}" for v in target_ras)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "QSMPlanner"))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, wall, usage.ru_maxrss * 1024, out.read(), err.read()


def main():
    rows = []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qsmplanner-bench-frame-") as tmp:
        for n, (name, system, slice_mm, slices, tilt, window, jitter, plates, clutter) in enumerate(CASES):
            ct, truth = make_ct(system, slice_mm, slices, tilt, window, jitter, plates, clutter, seed=100 + n)
            ct_path, out_json = Path(tmp) / "ct.nii", Path(tmp) / "frame.json"
            write_volume(ct, ct_path)
            shape = ct.shape3
            del ct
            targets_ras = apply(np.linalg.inv(truth), STN_FRAME)
            code, wall, rss, out, err = run_cli(ct_path, out_json, targets_ras[0])
            row = {"case": name, "shape": "x".join(map(str, shape)), "code": code, "time": wall, "rss": rss}
            if code == 0:
                doc = json.loads(out_json.read_text())
                fr = np.array(doc["frame_from_ras"])
                row.update(found=doc["system"], fre=doc["fre_mm"], worst=doc["worst_fiducial"]["residual_mm"],
                           pred=doc["target"]["predicted_tre_mm"], n=doc["n_points"],
                           tre=float(np.linalg.norm(apply(fr, targets_ras) - STN_FRAME, axis=1).max()))
                out_json.unlink()
            else:
                row["line"] = (err.strip().splitlines() or ["(no message)"])[-1].replace("qsmplanner frame: ", "")
            rows.append(row)
            ct_path.unlink()
    load1 = os.getloadavg()
    head = (f"{'case':27s} {'CT':12s} {'frame':9s} {'TRE mm':>6s} {'/0.1':>5s} {'FRE mm':>6s} {'/0.3':>5s} "
            f"{'worst':>5s} {'pred':>5s} {'N':>4s} {'time s':>6s} {'/30s':>5s} {'GiB':>5s} {'/2GiB':>5s} exit")
    print(head)
    print("-" * len(head))
    for r in rows:
        gib = r["rss"] / 2 ** 30
        common = f"{r['time']:6.1f} {r['time'] / 30:5.2f} {gib:5.2f} {gib / 2:5.2f} {r['code']}"
        if r["code"] == 0:
            print(f"{r['case']:27s} {r['shape']:12s} {r['found']:9s} {r['tre']:6.3f} {r['tre'] / 0.1:5.2f} "
                  f"{r['fre']:6.3f} {r['fre'] / 0.3:5.2f} {r['worst']:5.2f} {r['pred']:5.3f} {r['n']:4d} {common}")
        else:
            print(f"{r['case']:27s} {r['shape']:12s} {'-':9s} {'':6s} {'':5s} {'':6s} {'':5s} {'':5s} {'':5s} "
                  f"{'':4s} {common}  {r['line']}")
    print(f"TRE: true error at the STN targets; pred: predicted TRE there. Load average "
          f"{load0[0]:.1f} before, {load1[0]:.1f} after (2 cores).")


if __name__ == "__main__":
    main()
