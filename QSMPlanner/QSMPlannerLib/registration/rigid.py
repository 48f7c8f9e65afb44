"""Rigid multimodal registration (SimpleITK): Mattes MI, multi-resolution, masks, robust start.

Pinned configuration (fixed seeds): moments/geometry centring, a coarse rotational grid search at
8 mm, then Euler3D gradient descent with physical-shift scales over shrink 4,2,1 (smoothing 2,1,0 mm
voxels), then a tight full-resolution refinement with regular-step gradient descent.
Result ``fixed_from_moving`` is a RAS 4x4 (maps moving points into the fixed space).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import ProcessingError
from ..progress import as_progress
from ..volume import LPS_FROM_RAS, Volume

SEED = 20240607
MAX_SHIFT_MM = 60.0
MAX_ANGLE_DEG = 60.0


@dataclass
class RigidResult:
    fixed_from_moving: np.ndarray
    metric_initial: float
    metric_final: float
    converged: bool
    iterations: int
    qc: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"fixed_from_moving": np.asarray(self.fixed_from_moving).tolist(),
                "metric_initial": float(self.metric_initial), "metric_final": float(self.metric_final),
                "converged": bool(self.converged), "iterations": int(self.iterations),
                "qc": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.qc.items()}}


def _normalise(vol: Volume, mask: Volume | None):
    import SimpleITK as sitk
    data = np.asarray(vol.data, np.float32)
    if data.ndim == 4:  # multi-echo: root-sum-of-squares
        data = np.sqrt((data.astype(np.float32) ** 2).sum(axis=3))
    sel = data[mask.data > 0] if mask is not None else data[data > 0]
    if sel.size == 0:
        sel = data.ravel()
    lo, hi = np.percentile(sel, [0.5, 99.5])
    data = np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    img = vol.with_data(data).to_sitk()
    m = None
    if mask is not None:
        m = vol.with_data((np.asarray(mask.data) > 0).astype(np.uint8)).to_sitk()
        m.CopyInformation(img)
    return img, m


def _euler_ras(tx) -> np.ndarray:
    """sitk Euler3D (fixed LPS -> moving LPS) -> fixed_from_moving RAS."""
    a = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    t = np.array(tx.GetTranslation())
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return np.linalg.inv(LPS_FROM_RAS @ m @ LPS_FROM_RAS)


def _method(fixed_mask, moving_mask, bins=32, fraction=0.25):
    import SimpleITK as sitk
    r = sitk.ImageRegistrationMethod()
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(fraction, SEED)
    r.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        r.SetMetricMovingMask(moving_mask)
    return r


def _metric(fixed, moving, tx, fixed_mask, moving_mask, shrink=1, fraction=1.0):
    import SimpleITK as sitk
    r = _method(fixed_mask, moving_mask, fraction=fraction)
    if shrink > 1:
        f = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed, shrink * 0.5 * min(fixed.GetSpacing())),
                        [shrink] * 3)
        m = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving, shrink * 0.5 * min(moving.GetSpacing())),
                        [shrink] * 3)
        if fixed_mask is not None:
            r.SetMetricFixedMask(sitk.Resample(fixed_mask, f, sitk.Transform(), sitk.sitkNearestNeighbor))
        if moving_mask is not None:
            r.SetMetricMovingMask(sitk.Resample(moving_mask, m, sitk.Transform(),
                                                sitk.sitkNearestNeighbor))
    else:
        f, m = fixed, moving
    r.SetInitialTransform(tx, inPlace=False)
    try:
        return float(r.MetricEvaluate(f, m))
    except RuntimeError:
        return 0.0


def _coarse(img, mm):
    import SimpleITK as sitk
    sp = np.array(img.GetSpacing())
    shrink = [max(1, int(round(mm / s))) for s in sp]
    sm = sitk.SmoothingRecursiveGaussian(img, float(mm) / 2.0)
    return sitk.Shrink(sm, shrink)


def register_rigid(fixed: Volume, moving: Volume, fixed_mask: Volume | None = None,
                   moving_mask: Volume | None = None, init: str = "moments",
                   progress=None) -> RigidResult:
    """Register ``moving`` to ``fixed`` rigidly (multimodal). Raises ProcessingError on failure."""
    import SimpleITK as sitk
    prog = as_progress(progress)
    t0 = time.perf_counter()
    if init not in ("moments", "geometry"):
        raise ValueError("init must be 'moments' or 'geometry'")
    f_img, f_mask = _normalise(fixed, fixed_mask)
    m_img, m_mask = _normalise(moving, moving_mask)
    prog.update(0.02, "initialising")
    # centring
    mode = sitk.CenteredTransformInitializerFilter.MOMENTS if init == "moments" \
        else sitk.CenteredTransformInitializerFilter.GEOMETRY
    f_init = sitk.Mask(f_img, f_mask) if f_mask is not None else f_img
    m_init = sitk.Mask(m_img, m_mask) if m_mask is not None else m_img
    try:
        base = sitk.CenteredTransformInitializer(f_init, m_init, sitk.Euler3DTransform(), mode)
    except RuntimeError:
        base = sitk.CenteredTransformInitializer(f_img, m_img, sitk.Euler3DTransform(),
                                                 sitk.CenteredTransformInitializerFilter.GEOMETRY)
    base = sitk.Euler3DTransform(base)
    identity_metric = _metric(f_img, m_img, sitk.Euler3DTransform(), f_mask, m_mask)
    # coarse rotational search at ~8 mm
    f8, m8 = _coarse(f_img, 8.0), _coarse(m_img, 8.0)
    f8m = sitk.Resample(f_mask, f8, sitk.Transform(), sitk.sitkNearestNeighbor) if f_mask is not None else None
    m8m = sitk.Resample(m_mask, m8, sitk.Transform(), sitk.sitkNearestNeighbor) if m_mask is not None else None
    angles = np.deg2rad([-30.0, 0.0, 30.0])
    best = (np.inf, base)
    for ax, ay, az in itertools.product(angles, angles, angles):
        prog.check()
        tx = sitk.Euler3DTransform(base)
        tx.SetRotation(float(ax), float(ay), float(az))
        r = _method(f8m, m8m, fraction=1.0)
        r.SetInitialTransform(tx, inPlace=False)
        try:
            v = float(r.MetricEvaluate(f8, m8))
        except RuntimeError:
            continue
        if v < best[0]:
            best = (v, tx)
    # quick local optimisation at coarse level from the best few would be costlier; go multi-res
    tx = sitk.Euler3DTransform(best[1])
    metric_initial = _metric(f_img, m_img, tx, f_mask, m_mask, fraction=0.5)
    prog.update(0.15, "multi-resolution")
    r = _method(f_mask, m_mask, fraction=0.25)
    r.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=200,
                                    convergenceMinimumValue=1e-6, convergenceWindowSize=10,
                                    estimateLearningRate=r.EachIteration)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetShrinkFactorsPerLevel([4, 2, 1])
    r.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    r.SetInitialTransform(tx, inPlace=True)
    n_iter = [0]
    r.AddCommand(sitk.sitkIterationEvent, lambda: n_iter.__setitem__(0, n_iter[0] + 1))
    r.AddCommand(sitk.sitkMultiResolutionIterationEvent,
                 lambda: prog.update(0.15 + 0.25 * r.GetCurrentLevel(), f"level {r.GetCurrentLevel()}"))
    try:
        r.Execute(f_img, m_img)
    except RuntimeError as e:
        raise ProcessingError(f"rigid registration failed: {str(e).splitlines()[-1]}") from None
    prog.update(0.8, "refinement")
    r2 = _method(f_mask, m_mask, fraction=1.0)
    r2.SetMetricSamplingStrategy(r2.NONE)
    r2.SetOptimizerAsRegularStepGradientDescent(learningRate=0.5, minStep=1e-4, numberOfIterations=300,
                                                relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    r2.SetOptimizerScalesFromPhysicalShift()
    r2.SetInitialTransform(tx, inPlace=True)
    r2.AddCommand(sitk.sitkIterationEvent, lambda: n_iter.__setitem__(0, n_iter[0] + 1))
    try:
        r2.Execute(f_img, m_img)
    except RuntimeError as e:
        raise ProcessingError(f"rigid refinement failed: {str(e).splitlines()[-1]}") from None
    stop = r2.GetOptimizerStopConditionDescription()
    converged = "Maximum number of iterations" not in stop
    metric_final = _metric(f_img, m_img, tx, f_mask, m_mask, fraction=0.5)
    fixed_from_moving = _euler_ras(tx)
    # QC
    c = moving.center_ras if moving_mask is None else \
        moving.ijk_to_ras(np.argwhere(np.asarray(moving_mask.data) > 0).mean(axis=0))
    shift = float(np.linalg.norm(fixed_from_moving[:3, :3] @ c + fixed_from_moving[:3, 3] - c))
    angle = float(np.degrees(np.arccos(np.clip((np.trace(fixed_from_moving[:3, :3]) - 1) / 2, -1, 1))))
    qc = {"identity_metric": identity_metric, "shift_mm": shift, "angle_deg": angle,
          "stop": stop, "seconds": time.perf_counter() - t0}
    if f_mask is not None and m_mask is not None:
        mm_res = sitk.Resample(m_mask, f_mask, tx, sitk.sitkNearestNeighbor)
        a = sitk.GetArrayViewFromImage(f_mask) > 0
        b = sitk.GetArrayViewFromImage(mm_res) > 0
        qc["mask_dice"] = float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))
    result = RigidResult(fixed_from_moving, metric_initial, metric_final, converged, n_iter[0], qc)
    problems = []
    if not converged:
        problems.append("optimizer did not converge")
    if metric_final > metric_initial + 1e-4:
        problems.append("metric worse than initial")
    if metric_final > -0.05:
        problems.append("no mutual information at the solution")
    if shift > MAX_SHIFT_MM or angle > MAX_ANGLE_DEG:
        problems.append("implausible motion")
    if qc.get("mask_dice", 1.0) < 0.6:
        problems.append("poor mask overlap")
    prog.update(1.0, "done")
    if problems:
        raise ProcessingError(
            "rigid registration failed (" + "; ".join(problems) + f"): metric {metric_initial:.4f} -> "
            f"{metric_final:.4f}, shift {shift:.1f} mm, angle {angle:.1f} deg, "
            f"mask Dice {qc.get('mask_dice', float('nan')):.2f}, stop: {stop}")
    return result
