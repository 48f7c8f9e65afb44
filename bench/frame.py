"""Frame-registration benchmark: automatic Leksell N-localizer registration on synthetic stereotactic CTs.

One run, one table. Each CT is rendered with ``render_localizer_ct`` (partial-volume rods, 8 HU noise)
over a head (soft tissue + 1300 HU skull), with four metal pins and four 4 mm frame posts as
distractors, the frame at a known random-looking pose. Ratios: time / 10 s budget (issue target for
512x512x400), FRE / 0.35 mm (real Leksell G CT level), TRE / 0.2 mm (issue target at the STN).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))
from QSMPlannerLib.stereotaxy import register_frame, render_localizer_ct  # noqa: E402
from QSMPlannerLib.stereotaxy.geometry import XYZ_FROM_FRAMERAS, apply  # noqa: E402
from QSMPlannerLib.volume import ras_from_ijk_matrix, rotation_matrix  # noqa: E402

STN_XYZ = np.array([[112.0, 97.5, 104.0], [88.0, 97.5, 104.0]])
DISTRACTORS_XYZ = ([(np.array([100 + s * 55, y, 105.0]), np.array([100 + s * 95, y, 105.0]))   # pins
                    for s in (-1, 1) for y in (65.0, 135.0)]
                   + [(np.array([x, y, 95.0]), np.array([x, y, 160.0]))                      # posts
                      for x in (12.0, 188.0) for y in (62.0, 138.0)])
# name, shape, voxel mm, pose (deg, mm), slice window in frame-RAS S (None: whole), gantry tilt deg
CASES = [("512x512x400 0.49x0.49x0.6", (512, 512, 400), (0.49, 0.49, 0.6), ([5, -4, 6], [3, -6, 8]), None, 0),
         ("512x512x100 3 mm slices, tilt 15", (512, 512, 100), (0.49, 0.49, 3.0), ([-7, 6, -3], [-4, 5, -6]),
          None, 15),
         ("512x512x120 1 mm, partial (S -35..85)", (512, 512, 120), (0.49, 0.49, 1.0), ([3, 8, -5], [2, 2, 2]),
          (-35, 85), 0)]


def head_hu(ras_from_ijk, shape, centre_ras):
    """Soft-tissue ellipsoid with a skull shell, built slice by slice (HU, float32)."""
    out = np.empty(shape, np.float32)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for k in range(shape[2]):
        p = apply(ras_from_ijk, np.stack([ii, jj, np.full_like(ii, k)], -1).astype(np.float32)) - centre_ras
        r = np.sqrt((p[..., 0] / 72) ** 2 + (p[..., 1] / 92) ** 2 + (p[..., 2] / 82) ** 2)
        sl = np.full(r.shape, -1000.0, np.float32)
        sl[r < 1.0] = 40.0
        sl[(r > 0.92) & (r < 0.97)] = 1300.0
        out[:, :, k] = sl
    return out


def make_case(shape, voxel, pose_deg_mm, window, tilt_deg):
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(pose_deg_mm[0])
    pose[:3, 3] = pose_deg_mm[1]
    xyz_from_ras = XYZ_FROM_FRAMERAS @ np.linalg.inv(pose)
    direction = rotation_matrix([tilt_deg, 0, 0])
    m = ras_from_ijk_matrix(voxel, direction)
    centre = np.array([0.0, 15.0, 0.0 if window is None else (window[0] + window[1]) / 2])
    m[:3, 3] = centre - m[:3, :3] @ ((np.array(shape) - 1) / 2)
    head = head_hu(m, shape, apply(pose, [0, 10, 5]))
    ct = render_localizer_ct(m, shape, xyz_from_ras, head_hu=head, rng=1, pins_xyz=DISTRACTORS_XYZ)
    ct.data = ct.data.astype(np.int16)     # as a scanner stores it
    return ct, xyz_from_ras


def main():
    rows = []
    for name, shape, voxel, pose, window, tilt in CASES:
        ct, truth = make_case(shape, np.array(voxel), pose, window, tilt)
        w0, c0 = time.perf_counter(), time.process_time()
        reg = register_frame(ct)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        stn_ras = apply(np.linalg.inv(truth), STN_XYZ)
        tre = float(np.linalg.norm(apply(reg.xyz_from_ras, stn_ras) - STN_XYZ, axis=1).max())
        pred = max(reg.predicted_tre_mm(target_ras=p) for p in stn_ras)
        rows.append((name, wall, cpu, reg.n_points, reg.n_rejected, reg.fre_mm, tre, pred))
        del ct
    head = (f"{'case':40s} {'wall s':>7s} {'cpu s':>6s} {'wall/10s':>8s} {'points':>6s} {'rej':>4s} "
            f"{'FRE mm':>7s} {'FRE/0.35':>8s} {'TRE STN':>8s} {'TRE/0.2':>7s} {'pred TRE':>8s}")
    print(head)
    print("-" * len(head))
    for name, wall, cpu, n, rej, fre, tre, pred in rows:
        print(f"{name:40s} {wall:7.2f} {cpu:6.2f} {wall / 10:8.2f} {n:6d} {rej:4d} {fre:7.3f} {fre / 0.35:8.2f} "
              f"{tre:8.3f} {tre / 0.2:7.2f} {pred:8.3f}")
    print("TRE STN: worst true error at both STN points (mm); pred TRE: Fitzpatrick prediction from the FRE.")


if __name__ == "__main__":
    main()
