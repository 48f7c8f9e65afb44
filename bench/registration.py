"""Registration benchmark: ours vs itk-elastix (default rigid map) vs antspyx (Rigid), one run, one table.

Test pairs: the MNI template as "T1" (1.5 mm grid) and a GRE-like copy (inverted nonlinear contrast +
noise) in a known pose, on a 0.9x0.9x2 mm grid, one a partial-coverage slab. TRE over brain points and
at both STN centroids (CIT168). Wall time of each registration call in this one run (libraries imported
and warmed up first); "t/elx" = time / elastix time on the same case. Optional dependencies are
skipped when missing. Usage: .venv/bin/python bench/registration.py [--skip-atlas]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "QSMPlanner"))
from QSMPlannerLib import ATLAS_DIR  # noqa: E402
from QSMPlannerLib.io.volumes import read_volume  # noqa: E402
from QSMPlannerLib.registration import normalize_to_mni, register_rigid, resample  # noqa: E402
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix  # noqa: E402

CASES = [("20deg/25mm 1.5mm", [20, -5, 10], [15, -15, 12], (1.5, 1.5, 1.5), None),
         ("30deg/40mm GRE 0.9x0.9x2", [-10, 30, 5], [25, 25, -20], (0.9, 0.9, 2.0), None),
         ("15deg/20mm slab", [15, 0, -5], [10, -15, 8], (0.9, 0.9, 2.0), (-25, 15))]


def _pose(angles, shift):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles)
    m[:3, 3] = shift
    return m


def make_case(t1, angles, shift, voxel, slab):
    fixed = resample(t1, Volume(np.zeros((120, 144, 116)), ras_from_ijk_matrix((1.5,) * 3, origin=(-90, -126, -72))))
    pose = _pose(angles, shift)  # fixed_from_moving
    z0, z1 = slab if slab else (-72, 100)
    shape = (int(180 / voxel[0]), int(216 / voxel[1]), int((z1 - z0) / voxel[2]))
    # moving grid placed around the moved head
    grid = Volume(np.zeros(shape), ras_from_ijk_matrix(voxel, origin=(-90, -126, z0)))
    grid = Volume(grid.data, np.linalg.inv(pose) @ grid.ras_from_ijk)
    mov = resample(t1, grid, np.linalg.inv(pose))
    rng = np.random.default_rng(0)
    mov = mov.with_data(np.where(mov.data > 0, np.exp(-mov.data / 40.0) * 100, 0) + rng.normal(0, 2, mov.shape3))
    return fixed, mov, pose


def tre(est, pose, pts):
    moving_pts = pts @ np.linalg.inv(pose)[:3, :3].T + np.linalg.inv(pose)[:3, 3]
    back = moving_pts @ est[:3, :3].T + est[:3, 3]
    return np.linalg.norm(back - pts, axis=1)


def run_elastix(fixed, moving):
    import itk
    from QSMPlannerLib.registration.transform_io import fixed_from_moving_ras
    f = itk.GetImageFromArray(np.ascontiguousarray(fixed.data.transpose(2, 1, 0)).astype(np.float32))
    m = itk.GetImageFromArray(np.ascontiguousarray(moving.data.transpose(2, 1, 0)).astype(np.float32))
    for img, v in ((f, fixed), (m, moving)):
        s = fixed.to_sitk() if v is fixed else moving.to_sitk()
        img.SetSpacing(s.GetSpacing()); img.SetOrigin(s.GetOrigin())
        img.SetDirection(itk.matrix_from_array(np.array(s.GetDirection()).reshape(3, 3)))
    po = itk.ParameterObject.New()
    po.AddParameterMap(po.GetDefaultParameterMap("rigid"))
    _, params = itk.elastix_registration_method(f, m, parameter_object=po, log_to_console=False)
    p = [float(x) for x in params.GetParameter(0, "TransformParameters")]
    c = [float(x) for x in params.GetParameter(0, "CenterOfRotationPoint")]
    import SimpleITK as sitk
    e = sitk.Euler3DTransform()
    e.SetCenter(c)
    e.SetRotation(*p[:3])
    e.SetTranslation(p[3:])
    a = np.array(e.GetMatrix()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = np.array(e.GetTranslation()) + np.array(c) - a @ np.array(c)
    return fixed_from_moving_ras(lps)


def _sitk_from(vol):
    return vol.to_sitk(dtype=np.float32)


def run_ants(fixed, moving):
    import ants
    import SimpleITK as sitk
    from QSMPlannerLib.registration.transform_io import fixed_from_moving_ras

    def to_ants(vol):
        img = _sitk_from(vol)
        return ants.from_numpy(np.asarray(vol.data, np.float32), origin=img.GetOrigin(),
                               spacing=img.GetSpacing(),
                               direction=np.array(img.GetDirection()).reshape(3, 3))
    out = ants.registration(to_ants(fixed), to_ants(moving), type_of_transform="Rigid")
    tx = sitk.ReadTransform(out["fwdtransforms"][0])  # fixed LPS -> moving LPS
    tx = sitk.AffineTransform(tx) if tx.GetName() == "AffineTransform" else \
        sitk.AffineTransform(sitk.CompositeTransform(tx).GetNthTransform(0))
    a = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = np.array(tx.GetTranslation()) + c - a @ c
    return fixed_from_moving_ras(lps)


def main():
    t1 = read_volume(ATLAS_DIR / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    lab = read_volume(ATLAS_DIR / "CIT168_subcortex.nii.gz")
    stn = [lab.ijk_to_ras(np.argwhere(np.rint(lab.data) == v).mean(0)) for v in (16, 116)]
    methods = [("ours", lambda f, m: register_rigid(f, m).fixed_from_moving)]
    try:
        import itk
        itk.ParameterObject.New()  # warm up the lazy module loading outside the timings
        itk.elastix_registration_method  # noqa: B018
        methods.append(("elastix", run_elastix))
    except (ImportError, AttributeError):
        print("itk-elastix not installed: skipped")
    try:
        import ants  # noqa: F401
        methods.append(("ants", run_ants))
    except ImportError:
        print("antspyx not installed: skipped")
    rows = []
    for name, angles, shift, voxel, slab in CASES:
        fixed, moving, pose = make_case(t1, angles, shift, voxel, slab)
        pts = fixed.voxel_ras_grid()[fixed.data > 40][::50]
        if slab:
            pts = pts[(pts[:, 2] > slab[0] + 5) & (pts[:, 2] < slab[1] - 5)]
        for mname, fn in methods:
            t = time.perf_counter()
            try:
                est = fn(fixed, moving)
                dt = time.perf_counter() - t
                e = tre(est, pose, pts)
                es = tre(est, pose, np.array(stn))
                rows.append((name, mname, e.mean(), e.max(), es[0], es[1], dt))
            except Exception as ex:  # report, keep going
                rows.append((name, mname, np.nan, np.nan, np.nan, np.nan, time.perf_counter() - t))
                print(mname, name, "failed:", " ".join(str(ex).split())[:300])
    print("\nRigid registration, TRE in mm (targets: mean <= 0.1, max <= 0.25; time <= elastix)")
    print(f"{'case':28s} {'method':8s} {'TREmean':>8s} {'TREmax':>8s} {'STN_L':>7s} {'STN_R':>7s} {'time s':>7s} {'t/elx':>6s}")
    for r in rows:
        ref = [x for x in rows if x[0] == r[0] and x[1] == "elastix"]
        ratio = r[6] / ref[0][6] if ref else float("nan")
        print(f"{r[0]:28s} {r[1]:8s} {r[2]:8.3f} {r[3]:8.3f} {r[4]:7.3f} {r[5]:7.3f} {r[6]:7.1f} {ratio:6.2f}")

    if "--skip-atlas" not in sys.argv:
        atlas(t1, lab)


def atlas(t1, lab):
    """Atlas prior: template posed + scaled (8/0/5 deg, x1.05, 2 mm grid) as the patient; CIT168 STN
    warped back by normalize_to_mni vs the truth (centroid error, Dice)."""
    lab = lab.with_data(np.rint(lab.data).astype(np.int16))
    grid = Volume(np.zeros((80, 96, 80)), ras_from_ijk_matrix((2, 2, 2), origin=(-80, -112, -70)))
    patient_from_mni = np.eye(4)
    patient_from_mni[:3, :3] = rotation_matrix([8, 0, 5]) * 1.05
    patient_from_mni[:3, 3] = [4, -3, 2]
    patient = resample(t1, grid, patient_from_mni)
    truth = resample(lab, grid, patient_from_mni, interpolation="nearest")
    t = time.perf_counter()
    warped = normalize_to_mni(patient).warp_labels(grid)
    dt = time.perf_counter() - t
    print("\nAtlas normalisation (targets: STN centroid error <= 1.0 mm, Dice >= 0.7)")
    print(f"{'structure':10s} {'error mm':>9s} {'Dice':>6s} {'time s':>7s}")
    for name, value in (("STN_L", 16), ("STN_R", 116)):
        a, b = truth.data == value, warped.data == value
        err = np.linalg.norm(grid.ijk_to_ras(np.argwhere(a).mean(0)) - grid.ijk_to_ras(np.argwhere(b).mean(0))) \
            if b.any() else float("nan")
        print(f"{name:10s} {err:9.3f} {2 * (a & b).sum() / (a.sum() + b.sum()):6.3f} {dt:7.1f}")


if __name__ == "__main__":
    main()
