"""Rigid multimodal registration (SimpleITK): Mattes MI, own image pyramid, masks, robust start.

Pinned, validated configuration (``CONFIG``; fixed seeds, deterministic):
1. centrings of the masked images: the requested one (moments or geometry), the other one, and the
   moments of the overlap (each mask cut to the other image's field of view): with partial coverage
   (a GRE slab vs a T1 with neck) the centres of mass of the whole masks do not correspond;
2. coarse search on the coarsest pyramid level (16 mm: wide basins, so a centring pulled off by a
   neck the other image lacks, e.g. frame CT vs T1, still converges; a level with fewer than 5
   voxels across the thinnest image, i.e. a slab, is dropped): a grid of rotations from each centring
   (and, for a partial-coverage slab, shifts along the slab normal) scored by Mattes MI on all voxels
   (vectorised over the grid in numpy, SimpleITK's values);
   masks are dilated by 2 voxels on the search / multi-start levels (a brain mask alone leaves a
   featureless interior at 16-8 mm, where MI then prefers wrong poses);
3. multi-start: the best distinct grid points (8) are optimised locally at 16 mm, the best distinct
   3 of them at 8 mm, the competitive and distinct ones again at 4 mm, the best one wins;
4. restarts at 4 mm from two opposite perturbations (restart consistency; restarts that disagree
   are each continued once with a fresh step before the check), the better one refined at 2 mm, then
   the full resolution with a capped, fixed sample set (regular-step gradient descent, physical-shift
   scales) drawn on strong fixed-image edges inside the moving field of view, both images cropped to
   the samples' region (each metric set-up scans whole images). A partial-coverage slab is sampled
   in the slab (roles swapped at full resolution: the T1 contains it).
Metric derivatives by central differences: SimpleITK's default gradient-image filter gave wrong
derivatives on oriented (rotated-direction) images and stalled the optimiser 1-3 mm off the optimum.
5. a pose that fails the checks below: the whole search once more with three times the refined starts
   (``WIDE_SEARCH``); its pose is judged by the same checks.
Failure detection: optimiser stop, metric not improved / no MI, implausible motion, poor mask overlap,
restarts that disagree at 4 mm, and a full-resolution result far from the 2 mm one (pyramid
consistency); any of these raises ProcessingError with the numbers.
Result ``fixed_from_moving`` is a RAS 4x4 (maps moving points into the fixed space).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import as_progress
from ..volume import LPS_FROM_RAS, Volume, mask_box

SEED = 20240607
MAX_SHIFT_MM = 80.0
MAX_ANGLE_DEG = 60.0
MIN_LEVEL_VOXELS = 5.0
SLAB_SHIFT_FRACTION = 0.33   # slab search: shifts along its normal, this fraction of its thickness apart
BIAS_SIGMA_MM = 25.0         # scale of the receive-bias estimate (smooth; anatomy is finer)
LEVEL_KEYS = ("levels_mm", "level_iters", "level_step_mm", "level_min_step_mm", "level_samples")

# The validated configuration (bench/registration.py; test_registration_rigid.py). Do not tune casually.
CONFIG = {
    "bins": 32,
    "relaxation": 0.8,
    "search_angles_deg": (-40.0, -20.0, 0.0, 20.0, 40.0),
    "search_refine": 8,          # grid points refined on the search level (if a 16 mm level exists)
    "search_keep": 3,            # candidates optimised on the multi-start levels
    "mid_keep": 2,               # candidates optimised again at 4 mm
    "mid_margin": 0.2,           # ... if their 8 mm metric is within 20 % of the best
    "slab_starts": 6,            # a slab: grid points (+ centrings) optimised at 8 then all at 4 mm
    "distinct_mm": 3.0,          # ... and they are this far from every better one (box points)
    "levels_mm": (16.0, 8.0, 4.0, 2.0),      # search on the coarsest (wide basins: CT vs T1)
    "level_iters": (60, 60, 100, 100),
    "level_step_mm": (8.0, 4.0, 2.0, 1.0),
    "level_min_step_mm": (0.2, 0.1, 0.05, 0.02),
    "level_samples": (None, None, 20000, 20000),   # None = every voxel
    "final_samples": 120000,
    "final_edge_percentile": 75.0,           # full-res samples where |grad fixed| is in the top 25 %
    "final_edge_percentile_ct": 25.0,        # ... top 75 % with a CT: its top quarter is bone and air only
    "final_iters": 200,
    "final_relaxation": 0.85,    # slow step decay: noisy MI gradients otherwise stop the descent early
    "final_step_mm": 0.15,
    "final_min_step_mm": 0.01,
    "final_passes": 2,           # the full-resolution descent restarted with half the step (kept if better)
    "coarse_mask_dilation": 2,   # voxels, masks at the search / multi-start levels (16, 8 mm)
    "restart_perturbation": (3.0, 3.0),      # mm, deg at the 4 mm level
    "restart_tolerance_mm": 1.5,
    "pyramid_tolerance_mm": 1.5,
}
# the second search after a pose failed the checks: three times the refined grid points / slab starts
WIDE_SEARCH = {"search_refine": 24, "slab_starts": 12}


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
    data = np.asarray(vol.data, np.float32)
    if data.ndim == 4:  # multi-echo: root-sum-of-squares
        data = np.sqrt((data ** 2).sum(axis=3))
    sel = data[np.asarray(mask.data) > 0] if mask is not None else data[data > 0]
    if sel.size == 0:
        sel = data.ravel()
    lo, hi = np.percentile(sel[::max(1, sel.size // 200000)], [0.5, 99.5])
    data = np.clip((data - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    img = Volume(data, vol.ras_from_ijk).to_sitk()
    m = None
    if mask is not None:
        m = Volume((np.asarray(mask.data) > 0).astype(np.uint8), vol.ras_from_ijk).to_sitk()
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


def _fov_in_fixed(moving, fixed, tx, inset_mm):
    """uint8 image on the fixed grid: 1 where ``tx`` maps into the moving image's box, inset by
    ``inset_mm`` on every side (a smaller box of ones resampled by nearest neighbour, no erosion)."""
    import SimpleITK as sitk
    sp = np.array(moving.GetSpacing())
    cut = np.array([int(np.ceil(inset_mm / s)) for s in sp])
    size = np.maximum(np.array(moving.GetSize()) - 2 * cut, 1)
    ones = sitk.Image([int(v) for v in size], sitk.sitkUInt8) + 1
    ones.SetSpacing(moving.GetSpacing())
    ones.SetDirection(moving.GetDirection())
    ones.SetOrigin(moving.TransformIndexToPhysicalPoint([int(c) for c in cut]))
    return sitk.Resample(ones, fixed, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


class _Level:
    """One pyramid level: fixed/moving (and masks) smoothed and resampled to ``mm`` isotropic."""

    def __init__(self, f_img, m_img, f_mask, m_mask, mm, smooth=False):
        self.mm = mm
        down = _down_smooth if smooth else _down
        self.f, self.fm = down(f_img, f_mask, mm)
        self.m, self.mm_mask = down(m_img, m_mask, mm)
        self._n = None

    def with_edge_mask(self, percentile, tx=None, max_voxels=None):
        """Restrict fixed samples to strong edges (top ``100 - percentile`` % gradient magnitude,
        inside the fixed mask if any, and inside the moving field of view mapped by ``tx``): far
        more registration information per sample, none wasted outside a partial-coverage slab.
        ``max_voxels``: a fixed random subset of them (samples stay at voxel centres: ITK's own
        subsampling moves each sample off its centre, and the fixed image interpolated there
        shifts the optimum by ~0.05 mm)."""
        import SimpleITK as sitk
        g = sitk.GetArrayFromImage(sitk.GradientMagnitude(self.f))
        inside = sitk.GetArrayFromImage(self.fm) > 0 if self.fm is not None else np.ones(g.shape, bool)
        if tx is not None:
            # keep samples >= ~4 mm inside the moving field of view (no overlap-change effects)
            fov = sitk.GetArrayViewFromImage(_fov_in_fixed(self.m, self.f, tx, 4.0)) > 0
            if fov[inside].sum() > 1000:
                inside &= fov
        thr = np.percentile(g[inside], percentile)
        keep = (g > thr) & inside
        if max_voxels is not None and keep.sum() > max_voxels:
            # every k-th voxel along the axes with room for it (the metric scans the whole fixed grid
            # for its mask each evaluation: a sparser grid is cheaper), then a random subset
            k = max(1, int((keep.sum() / max_voxels) ** (1.0 / 3.0)))
            step = [k if n >= 20 * k else 1 for n in keep.shape]  # (z, y, x)
            if max(step) > 1:
                sl = tuple(slice(0, None, st) for st in step)
                keep = keep[sl]
                a = sitk.GetArrayFromImage(self.f)[sl]
                f = sitk.GetImageFromArray(np.ascontiguousarray(a))
                f.SetOrigin(self.f.GetOrigin())
                f.SetDirection(self.f.GetDirection())
                f.SetSpacing([sp * st for sp, st in zip(self.f.GetSpacing(), step[::-1])])
                self.f = f
            if keep.sum() > max_voxels:
                idx = np.flatnonzero(keep)
                keep = np.zeros(keep.shape, bool)
                keep.flat[np.random.default_rng(SEED).choice(idx, int(max_voxels), replace=False)] = True
        m = sitk.GetImageFromArray(keep.astype(np.uint8))
        m.CopyInformation(self.f)
        self.fm = m
        self._n = None
        return self

    def with_fixed_cropped(self):
        """Fixed image and mask cut to the fixed mask's bounding box: each metric set-up scans the
        whole fixed image (tens of milliseconds at full resolution)."""
        import SimpleITK as sitk
        if self.fm is not None:
            box = mask_box(sitk.GetArrayViewFromImage(self.fm) > 0)[::-1]  # (x, y, z) of the (z, y, x) array
            lo, size = [b.start for b in box], [b.stop - b.start for b in box]
            self.f = sitk.RegionOfInterest(self.f, size, lo)
            self.fm = sitk.RegionOfInterest(self.fm, size, lo)
        return self

    def with_moving_cropped(self, tx, margin_mm=10.0):
        """Moving image (and mask) cut to the fixed image's box mapped by ``tx``, plus a margin."""
        import SimpleITK as sitk
        size = np.array(self.f.GetSize()) - 1
        corners = [self.f.TransformContinuousIndexToPhysicalPoint((np.array(c) * size).tolist())
                   for c in itertools.product((0, 1), repeat=3)]
        ijk = np.array([self.m.TransformPhysicalPointToContinuousIndex(tx.TransformPoint(p)) for p in corners])
        margin = margin_mm / np.array(self.m.GetSpacing())
        lo = np.clip(np.floor(ijk.min(0) - margin), 0, None).astype(int)
        hi = np.minimum(np.ceil(ijk.max(0) + margin).astype(int) + 1, self.m.GetSize())
        if np.all(hi > lo):
            self.m = sitk.RegionOfInterest(self.m, (hi - lo).tolist(), lo.tolist())
            if self.mm_mask is not None:
                self.mm_mask = sitk.RegionOfInterest(self.mm_mask, (hi - lo).tolist(), lo.tolist())
        return self

    def with_moving_mask_fixed(self, tx):
        """The moving mask mapped into the fixed space by ``tx`` once, as part of the fixed mask: ITK
        drops the samples that map outside the moving mask, so with both masks the sample set changes
        with the pose (a biased optimum when the masks differ, e.g. a GRE head and a T1 brain)."""
        import SimpleITK as sitk
        if self.mm_mask is not None:
            inside = sitk.Resample(self.mm_mask, self.f, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
            if self.fm is not None:
                inside = sitk.And(inside, self.fm)
            if sitk.GetArrayViewFromImage(inside).sum() > 1000:
                self.fm, self.mm_mask = inside, None
                self._n = None
        return self

    def with_dilated_masks(self, voxels):
        """Masks dilated by ``voxels`` level voxels: at coarse levels a brain mask leaves a nearly
        featureless interior (MI then favours wrong poses); its rim (CSF, skull, scalp) restores the
        outline that makes the coarse metric discriminative."""
        import SimpleITK as sitk
        if voxels > 0:
            self.fm = sitk.BinaryDilate(self.fm, [int(voxels)] * 3) if self.fm is not None else None
            self.mm_mask = sitk.BinaryDilate(self.mm_mask, [int(voxels)] * 3) \
                if self.mm_mask is not None else None
            self._n = None
        return self

    def n_voxels(self):
        if self._n is None:
            import SimpleITK as sitk
            self._n = int(sitk.GetArrayViewFromImage(self.fm).sum()) if self.fm is not None \
                else int(np.prod(self.f.GetSize()))
        return self._n


def _axis_mm(img, mm):
    """Level spacing per image axis: ``mm``, but at least MIN_LEVEL_VOXELS across every axis (a thin
    slab keeps its few slices at the coarse levels) and never finer than the image."""
    sp = np.array(img.GetSpacing())
    extent = np.array(img.GetSize()) * sp
    return np.maximum(sp, np.minimum(float(mm), extent / MIN_LEVEL_VOXELS))


def _down(img, mask, mm):
    """Box-average (BinShrink) by whole factors to about ``mm`` per voxel (cheap anti-aliasing)."""
    import SimpleITK as sitk
    sp = np.array(img.GetSpacing())
    if mm is None or np.all(_axis_mm(img, mm) <= sp * 1.01):
        return img, mask
    factors = [max(1, int(m / s + 1e-3)) for m, s in zip(_axis_mm(img, mm), sp)]
    out = sitk.BinShrink(img, factors)
    out_mask = None
    if mask is not None:
        out_mask = sitk.Cast(sitk.BinShrink(sitk.Cast(mask, sitk.sitkFloat32), factors) > 0.5, sitk.sitkUInt8)
    return _down_smooth(out, out_mask, mm)  # then a light Gaussian on the small image


def _down_smooth(img, mask, mm):
    """Gaussian-smoothed resampling to ``mm`` isotropic (same extent), for the coarse levels."""
    import SimpleITK as sitk
    sp = np.array(img.GetSpacing())
    if mm is None or np.all(_axis_mm(img, mm) <= sp * 0.99):
        return img, mask
    size = np.array(img.GetSize())
    new_sp = np.maximum(sp, _axis_mm(img, mm))
    new_size = [max(2, int(np.ceil(s * p / q))) for s, p, q in zip(size, sp, new_sp)]
    sigma = np.array([max(float(np.sqrt(max(q * q - p * p, 0.0)) / 2.0), 0.01 * p) for p, q in zip(sp, new_sp)])
    # below half a voxel the Gaussian adds little to the linear interpolation's own averaging
    sm = sitk.SmoothingRecursiveGaussian(img, sigma.tolist()) if np.any(sigma >= 0.5 * sp) else img
    d = np.array(img.GetDirection()).reshape(3, 3)
    origin = np.array(img.GetOrigin()) + d @ ((new_sp - sp) / 2.0)
    ref = sitk.Image([int(s) for s in new_size], sitk.sitkFloat32)
    ref.SetSpacing([float(s) for s in new_sp])
    ref.SetDirection(img.GetDirection())
    ref.SetOrigin([float(o) for o in origin])
    out = sitk.Resample(sm, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    out_mask = None
    if mask is not None:
        out_mask = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return out, out_mask


def _method(level: _Level, n_samples=None):
    import SimpleITK as sitk
    r = sitk.ImageRegistrationMethod()
    total = level.n_voxels()
    if level.mm is not None and min(total, n_samples or total) < 20000:
        r.SetNumberOfThreads(1)  # little work per iteration: one thread avoids sync stalls when busy
    r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=CONFIG["bins"])
    if n_samples is None or n_samples >= total:
        r.SetMetricSamplingStrategy(r.NONE)
    else:
        r.SetMetricSamplingStrategy(r.REGULAR)
        r.SetMetricSamplingPercentage(float(n_samples) / float(total), SEED)  # of the masked voxels
    r.SetInterpolator(sitk.sitkLinear)
    # central differences: the (default) gradient-image filter gives wrong metric derivatives for
    # oriented (rotated-direction) images here, trapping the optimiser millimetres from the optimum
    r.SetMetricUseMovingImageGradientFilter(False)
    r.SetMetricUseFixedImageGradientFilter(False)
    if level.fm is not None:
        r.SetMetricFixedMask(level.fm)
    if level.mm_mask is not None:
        r.SetMetricMovingMask(level.mm_mask)
    return r


def _evaluate(level: _Level, tx, n_samples=None) -> float:
    import SimpleITK as sitk
    r = _method(level, n_samples)
    r.SetInitialTransform(sitk.Euler3DTransform(tx), inPlace=True)
    try:
        return float(r.MetricEvaluate(level.f, level.m))
    except RuntimeError:
        return 0.0


def _optimise(level: _Level, tx, iters, step, min_step, n_samples=None, counter=None, relaxation=None):
    """Regular-step gradient descent of an Euler3D in place; returns (metric, stop description)."""
    import SimpleITK as sitk
    r = _method(level, n_samples)
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=step, minStep=min_step,
                                               numberOfIterations=int(iters),
                                               relaxationFactor=relaxation or CONFIG["relaxation"],
                                               gradientMagnitudeTolerance=1e-8)
    r.SetOptimizerScalesFromPhysicalShift()
    r.SetInitialTransform(tx, inPlace=True)
    if counter is not None:
        r.AddCommand(sitk.sitkIterationEvent, lambda: counter.__setitem__(0, counter[0] + 1))
    try:
        r.Execute(level.f, level.m)
    except RuntimeError as e:
        return 0.0, "error: " + str(e).splitlines()[-1]
    return float(r.GetMetricValue()), r.GetOptimizerStopConditionDescription()


def _search_scores(level: _Level, transforms, chunk_points=4_000_000) -> np.ndarray:
    """Mattes mutual information (negated, as SimpleITK's, which it reproduces) of many Euler3D poses
    at once on a coarse level: every fixed voxel in the fixed mask, linear interpolation, moving mask
    by nearest voxel, box (fixed) and cubic B-spline (moving) Parzen windows; NaN where fewer than 50
    samples map into the moving image and mask. A SimpleITK evaluation costs ~1 ms of set-up a pose."""
    import SimpleITK as sitk
    from scipy import ndimage
    bins, pad = CONFIG["bins"], 2
    fa = sitk.GetArrayViewFromImage(level.f)
    inside = sitk.GetArrayViewFromImage(level.fm) > 0 if level.fm is not None else np.ones(fa.shape, bool)
    d = np.array(level.f.GetDirection()).reshape(3, 3) * np.array(level.f.GetSpacing())
    pts = np.argwhere(inside)[:, ::-1] @ d.T + np.array(level.f.GetOrigin())
    fv = fa[inside].astype(np.float64)
    ma = sitk.GetArrayViewFromImage(level.m)
    mmask = sitk.GetArrayViewFromImage(level.mm_mask) > 0 if level.mm_mask is not None else None
    m_sel = ma[mmask] if mmask is not None and mmask.any() else ma
    f_lo, m_lo = fv.min(), float(m_sel.min())
    f_bin = max(fv.max() - f_lo, 1e-9) / (bins - 2 * pad)
    m_bin = max(float(m_sel.max()) - m_lo, 1e-9) / (bins - 2 * pad)
    f_idx = np.clip(((fv - f_lo) / f_bin).astype(np.int64) + pad, pad, bins - pad - 1)
    inv_m = np.linalg.inv(np.array(level.m.GetDirection()).reshape(3, 3) * np.array(level.m.GetSpacing()))
    m_origin = np.array(level.m.GetOrigin())
    hi = np.array(ma.shape[::-1]) - 0.5
    out = np.full(len(transforms), np.nan)
    per_chunk = max(1, chunk_points // max(len(pts), 1))
    for c0 in range(0, len(transforms), per_chunk):
        group = transforms[c0:c0 + per_chunk]
        rot = np.array([np.reshape(t.GetMatrix(), (3, 3)) for t in group])
        centre = np.array([t.GetCenter() for t in group])
        shift = np.array([t.GetTranslation() for t in group]) + centre - np.einsum("kxy,ky->kx", rot, centre)
        # moving continuous index (i, j, k) of every (pose, point): inv_m @ (rot p + shift - origin)
        lin = (inv_m @ rot).transpose(2, 0, 1).reshape(3, -1)  # one matrix product for all poses
        ijk = (pts @ lin).reshape(len(pts), len(group), 3).transpose(1, 0, 2) \
            + ((shift - m_origin) @ inv_m.T)[:, None, :]
        valid = np.all((ijk > -0.5) & (ijk < hi), axis=2)
        if mmask is not None:
            r = np.clip(np.rint(ijk).astype(np.int64), 0, np.array(ma.shape[::-1]) - 1)
            valid &= mmask[r[..., 2], r[..., 1], r[..., 0]]
        pose, point = np.nonzero(valid)
        mv = ndimage.map_coordinates(ma, ijk[pose, point, ::-1].T, order=1, mode="nearest", prefilter=False)
        x = np.clip((mv - m_lo) / m_bin + pad, pad, bins - pad - 1e-6)  # interpolated past the mask's range
        lo = np.floor(x)
        t = x - lo
        cell = (pose * bins + f_idx[point]) * bins + lo.astype(np.int64) - 1
        hist = np.zeros(len(group) * bins * bins)
        for s, w in enumerate(((1 - t) ** 3 / 6, (3 * t ** 3 - 6 * t ** 2 + 4) / 6,
                               (-3 * t ** 3 + 3 * t ** 2 + 3 * t + 1) / 6, t ** 3 / 6)):
            hist += np.bincount(cell + s, w, minlength=hist.size)[:hist.size]
        hist = hist.reshape(len(group), bins, bins)
        n_valid = np.bincount(pose, minlength=len(group))
        for k in np.flatnonzero(n_valid >= 50):
            p = hist[k] / hist[k].sum()
            pf, pm = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
            nz = p > 0
            out[c0 + k] = -float((p[nz] * np.log(p[nz] / (pf @ pm)[nz])).sum())
    return out

def _unexplained_fraction(level: _Level, tx, n_bins=32) -> float:
    """Residual mismatch at ``tx``: the fraction of the moving image's variance over the level's fixed
    samples that the fixed intensity does not explain (1 - the correlation ratio; 0 = one image is a
    function of the other, 1 = unrelated); NaN when fewer than 100 samples map into the moving image."""
    import SimpleITK as sitk
    moved = sitk.GetArrayViewFromImage(sitk.Resample(level.m, level.f, tx, sitk.sitkLinear, -1.0))
    f = sitk.GetArrayViewFromImage(level.f)
    inside = sitk.GetArrayViewFromImage(level.fm) > 0 if level.fm is not None else np.ones(f.shape, bool)
    inside = inside & (moved >= 0)  # normalised images are >= 0: -1 is outside the moving image
    if inside.sum() < 100:
        return float("nan")
    fv, mv = f[inside].astype(np.float64), moved[inside].astype(np.float64)
    edges = np.unique(np.percentile(fv, np.linspace(0, 100, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, fv) - 1, 0, max(len(edges) - 2, 0))
    count = np.bincount(which)
    mean = np.bincount(which, mv) / np.maximum(count, 1)
    total = float(((mv - mv.mean()) ** 2).sum())
    return float(((mv - mean[which]) ** 2).sum() / total) if total > 0 else float("nan")


def _relative_log_bias(img, other, other_from_img, sigma_mm=BIAS_SIGMA_MM, n_bins=48):
    """Smooth log ratio of ``img`` to what ``other`` predicts for it (the mean ``img`` intensity per
    ``other`` intensity bin; ``other_from_img`` maps img points to other points), on img's grid: the
    receive bias of img relative to other. None when the overlap is too small to say."""
    import SimpleITK as sitk
    m = sitk.GetArrayFromImage(img).astype(np.float64)
    f_on_m = sitk.GetArrayFromImage(sitk.Resample(other, img, other_from_img, sitk.sitkLinear, -1.0))
    f_inside = sitk.GetArrayFromImage(sitk.Resample(other * 0 + 1, img, other_from_img, sitk.sitkNearestNeighbor, 0))
    ok = (f_inside > 0) & (f_on_m >= 0) & (m > 0.05) & (f_on_m > 0.05)
    if ok.sum() < 2000:
        return None
    # the flatter half of both only: near edges a residual misalignment or a different blur (partial
    # volume, a nonlinear contrast) changes the ratio, which is not receive bias
    f_img = sitk.GetImageFromArray(f_on_m.astype(np.float32))
    f_img.CopyInformation(img)
    for g in (sitk.GradientMagnitude(img), sitk.GradientMagnitude(f_img)):
        g = sitk.GetArrayFromImage(g)
        ok &= g <= np.percentile(g[ok], 50.0)
    edges = np.unique(np.percentile(f_on_m[ok], np.linspace(0, 100, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, f_on_m[ok]) - 1, 0, len(edges) - 2)
    mean_m = np.bincount(which, m[ok], len(edges) - 1) / np.maximum(np.bincount(which, None, len(edges) - 1), 1)
    log_ratio = np.zeros(m.shape)
    log_ratio[ok] = np.log(np.maximum(m[ok], 1e-3) / np.maximum(mean_m[which], 1e-3))
    log_ratio[ok] = np.clip(log_ratio[ok], -1.0, 1.0)  # a mismatched structure is not bias

    def smooth(a, sigma):
        out = sitk.GetImageFromArray(a.astype(np.float32))
        out.CopyInformation(img)
        return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(out, sigma))
    # normalised convolution; where the samples are too far, a wider one, then their mean (no step
    # of the field at the edge of the samples: it would add an edge to the image)
    field = np.full(m.shape, float(log_ratio[ok].mean()))
    for sigma in (3.0 * sigma_mm, sigma_mm):
        weight = smooth(ok.astype(np.float32), sigma)
        field = np.where(weight > 0.05, smooth(log_ratio, sigma) / np.maximum(weight, 1e-6), field)
    out = sitk.GetImageFromArray(field.astype(np.float32))
    out.CopyInformation(img)
    return out


def _debiased(img, log_bias):
    """``img`` divided by exp(``log_bias``) (a coarser grid, linearly interpolated)."""
    import SimpleITK as sitk
    field = sitk.Resample(log_bias, img, sitk.Transform(), sitk.sitkLinear, 0.0)
    return sitk.Cast(sitk.Divide(img, sitk.Exp(field)), sitk.sitkFloat32)


def _inverse(tx):
    """Inverse of an Euler3D (same centre convention), as an Euler3D."""
    import SimpleITK as sitk
    a = np.array(tx.GetMatrix()).reshape(3, 3)
    c = np.array(tx.GetCenter())
    off = np.array(tx.GetTranslation()) + c - a @ c  # x -> a x + off
    inv = sitk.Euler3DTransform()
    inv.SetCenter(c.tolist())
    inv.SetMatrix(a.T.ravel().tolist())
    inv_off = -a.T @ off
    inv.SetTranslation((inv_off - c + a.T @ c).tolist())
    return inv


def _slab_points(img, fixed_from_moving_tx):
    """Fixed-space points spanning a slab's field of view (its box shrunk to 80 %)."""
    size = np.array(img.GetSize()) - 1.0
    corners = [np.array(c) * size * 0.8 + size * 0.1 for c in itertools.product((0, 1), repeat=3)]
    pm = [img.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners + [size / 2]]
    return np.array([fixed_from_moving_tx.TransformPoint(p) for p in pm])


def _head_points(img, mask):
    """Points (LPS mm) spanning the head (mask, else the brighter half of the image) inside a slab:
    its centre and the corners of its box shrunk to 70 %: where a pose error matters, not the air
    in the corners of the field of view."""
    import SimpleITK as sitk
    a = sitk.GetArrayViewFromImage(img)
    inside = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None else a > np.percentile(a, 50)
    idx = np.argwhere(inside)[:, ::-1].astype(float)
    if len(idx) < 10:
        return _slab_points(img, sitk.Euler3DTransform())
    lo, hi = idx.min(0), idx.max(0)
    c, half = (lo + hi) / 2, (hi - lo) / 2 * 0.7
    corners = [c + half * np.array(s) for s in itertools.product((-1, 1), repeat=3)]
    return np.array([img.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in [c] + corners])


def _box_points(img, mask):
    """Points (fixed LPS mm) spanning the region of interest: centre and a +-50 mm box."""
    import SimpleITK as sitk
    if mask is not None:
        idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
        c = np.array(img.TransformContinuousIndexToPhysicalPoint(idx.mean(0).tolist())) if len(idx) else None
    else:
        c = None
    if c is None:
        c = np.array(img.TransformContinuousIndexToPhysicalPoint(((np.array(img.GetSize()) - 1) / 2.0).tolist()))
    corners = np.array(list(itertools.product((-50.0, 50.0), repeat=3)))
    return np.vstack([c, c + corners])


def _distance_mm(tx_a, tx_b, pts) -> float:
    """Max displacement (mm) between two transforms over ``pts`` (fixed LPS)."""
    pa = np.array([tx_a.TransformPoint(p.tolist()) for p in pts])
    pb = np.array([tx_b.TransformPoint(p.tolist()) for p in pts])
    return float(np.linalg.norm(pa - pb, axis=1).max())


def _thin_axis(img, other):
    """Unit direction (LPS) of the moving image's thinnest physical extent, with the coverage gap (mm)
    relative to the other image's smallest extent; (None, 0) if not a partial-coverage slab."""
    ext = np.array(img.GetSize()) * np.array(img.GetSpacing())
    other_ext = np.array(other.GetSize()) * np.array(other.GetSpacing())
    k = int(np.argmin(ext))
    if ext[k] > 0.6 * other_ext.min():
        return None, 0.0, float(ext[k])
    d = np.array(img.GetDirection()).reshape(3, 3)[:, k]
    return d, float(other_ext.min() - ext[k]), float(ext[k])


def _centre_of_mass(img, mask):
    """Intensity-weighted centre of mass (LPS mm) of ``img`` inside ``mask`` (None if empty)."""
    import SimpleITK as sitk
    w = sitk.GetArrayFromImage(img).astype(np.float64)
    if mask is not None:
        w = w * (sitk.GetArrayViewFromImage(mask) > 0)
    w = np.clip(w, 0, None)
    if w.sum() <= 0:
        return None
    idx = [float((w.sum(axis=tuple(a for a in range(3) if a != 2 - k)) * np.arange(w.shape[2 - k])).sum()
                 / w.sum()) for k in range(3)]  # (i, j, k) = (x, y, z) axes of the numpy (z, y, x) array
    return np.array(img.TransformContinuousIndexToPhysicalPoint(idx))


def _centred(c_fixed, c_moving):
    import SimpleITK as sitk
    t = sitk.Euler3DTransform()
    t.SetCenter(c_fixed.tolist())
    t.SetTranslation((c_moving - c_fixed).tolist())
    return t


def _centrings(level, init):
    """Candidate starting transforms (no rotation) on ``level``: the requested centring (moments or
    geometry), the other one, and the moments of the overlap (each mask restricted to the other image's
    field of view, twice): with partial coverage (a slab vs a whole head with neck) the centres of
    mass of the whole masks do not correspond. Near-duplicates (< 5 mm apart) are dropped."""
    import SimpleITK as sitk
    geometry = [np.array(i.TransformContinuousIndexToPhysicalPoint(((np.array(i.GetSize()) - 1) / 2.0)
                                                                    .tolist())) for i in (level.f, level.m)]
    moments = [_centre_of_mass(level.f, level.fm), _centre_of_mass(level.m, level.mm_mask)]
    if moments[0] is None or moments[1] is None:
        moments = geometry
    found = {"moments": _centred(*moments), "geometry": _centred(*geometry)}
    overlap = found["moments"]
    for _ in range(2):
        f_in = _fov_in_fixed(level.m, level.f, overlap, 0.0)
        m_in = _fov_in_fixed(level.f, level.m, _inverse(overlap), 0.0)
        if level.fm is not None:
            f_in = sitk.And(f_in, level.fm)
        if level.mm_mask is not None:
            m_in = sitk.And(m_in, level.mm_mask)
        c_f, c_m = _centre_of_mass(level.f, f_in), _centre_of_mass(level.m, m_in)
        if c_f is None or c_m is None:
            break
        overlap = _centred(c_f, c_m)
    other = "geometry" if init == "moments" else "moments"
    pts = _box_points(level.f, level.fm)
    out = []
    # the scanner geometry as it is (images of one session share the scanner's coordinates)
    scanner = _centred(moments[0], moments[0])
    for t in (found[init], found[other], overlap, scanner):
        if all(_distance_mm(t, o, pts) > 5.0 for o in out):
            out.append(t)
    return out


def _perturbed(tx, shift_mm, angle_deg, sign):
    import SimpleITK as sitk
    t = sitk.Euler3DTransform(tx)
    a = np.deg2rad(angle_deg) * sign / np.sqrt(3.0)
    t.SetRotation(t.GetAngleX() + a, t.GetAngleY() + a, t.GetAngleZ() + a)
    t.SetTranslation((np.array(t.GetTranslation()) + sign * shift_mm / np.sqrt(3.0)).tolist())
    return t


def register_rigid(fixed: Volume, moving: Volume, fixed_mask: Volume | None = None,
                   moving_mask: Volume | None = None, init: str = "moments",
                   progress=None) -> RigidResult:
    """Register ``moving`` to ``fixed`` rigidly (multimodal, RAS mm). Raises ProcessingError on failure.

    Returns RigidResult with ``fixed_from_moving`` (RAS 4x4) and QC numbers in ``qc``.
    """
    if init not in ("moments", "geometry"):
        raise ValueError("init must be 'moments' or 'geometry'")
    check_inputs(fixed, moving, fixed_mask, moving_mask)
    ct = _is_ct(moving) or _is_ct(fixed)
    prog = as_progress(progress)
    slab = _is_slab(moving, fixed)
    for wide in (False, True):
        # a pose that fails the checks is searched again more widely (more starts refined): a start
        # grid 20 deg apart can leave the true basin out of the few best raw scores; the same checks
        # judge the second search, and its numbers are reported either way
        part = prog.sub(0.5, 1.0) if wide else prog.sub(0.0, 0.5)
        if slab:
            # a partial-coverage slab is the fixed image inside: every metric sample then lies in the
            # slab and maps into the whole head (no overlap change with the pose)
            result, problems = _register(moving, fixed, moving_mask, fixed_mask, init, part,
                                         None if _is_ct(moving) else "fixed", ct, wide)
            result = _inverted(result, moving, moving_mask)
        else:
            result, problems = _register(fixed, moving, fixed_mask, moving_mask, init, part,
                                         None if _is_ct(moving) else "moving", ct, wide)
        result.qc["wide_search"] = wide
        if not problems:
            break
    prog.update(1.0, "done")
    result.qc["summary"] = qc_line(result.qc)
    if problems:
        raise ProcessingError(
            "rigid registration failed (" + "; ".join(problems) + ") after a second, wider search: "
            f"{result.qc['summary']}; metric (mutual information, nats) {-result.metric_initial:.4f} -> "
            f"{-result.metric_final:.4f}; optimiser: {result.qc['stop']}")
    return result


def qc_line(qc: dict) -> str:
    """The QC in one line a reader can check: restart agreement (mm) at the centre and over the region,
    the full-resolution step from the 2 mm pose (mm), the residual mismatch (%; before registration), the
    motion found."""
    def percent(key):
        v = qc.get(key)
        return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.0f} %"
    line = (f"restarts end {qc['restart_disagreement_centre_mm']:.2f} mm apart at the centre of "
            f"{qc['qc_region']} ({qc['restart_disagreement_mm']:.2f} mm at its corners); full resolution "
            f"moved {qc['pyramid_change_mm']:.2f} mm from the 2 mm pose; residual mismatch "
            f"{percent('residual_mismatch')} of the moving image's variance not explained by the fixed one "
            f"({percent('residual_mismatch_start')} before registration); motion {qc['shift_mm']:.1f} mm, "
            f"{qc['angle_deg']:.1f} deg")
    if qc.get("mask_dice") is not None:
        line += f"; mask Dice {qc['mask_dice']:.2f}"
    return line


def _source(vol: Volume, role: str) -> str:
    return vol.meta.get("path") or vol.name or role


def _world_box(vol: Volume) -> np.ndarray:
    n = np.array(vol.shape3) - 1
    corners = np.array(list(itertools.product(*[(0, k) for k in n])), float)
    ras = corners @ vol.ras_from_ijk[:3, :3].T + vol.ras_from_ijk[:3, 3]
    return np.array([ras.min(0), ras.max(0)])


def check_image(vol: Volume, role: str, stage: str) -> None:
    """Refuse an image ``stage`` cannot use (InputError naming the file): 2-D (fewer than 4 voxels along
    an axis), blank or not finite."""
    if min(vol.shape3) < 4:
        raise InputError(f"{role} is 2-D (shape {vol.shape3}): {stage} needs a 3-D volume", _source(vol, role))
    data = np.asarray(vol.data)
    if not np.isfinite(data).all() or float(data.max()) <= float(data.min()):
        raise InputError(f"{role} is blank (constant) or not finite", _source(vol, role))


def check_inputs(fixed: Volume, moving: Volume, fixed_mask: Volume | None = None,
                 moving_mask: Volume | None = None) -> None:
    """Refuse what cannot be registered (InputError naming the file): a 2-D image (fewer than 4
    voxels along an axis), a blank image, a mask on another grid or empty, fields of view that do not
    overlap at all (RAS boxes)."""
    for vol, role in ((fixed, "fixed image"), (moving, "moving image")):
        check_image(vol, role, "rigid registration")
    for vol, mask, role in ((fixed, fixed_mask, "fixed mask"), (moving, moving_mask, "moving mask")):
        if mask is None:
            continue
        if tuple(mask.shape3) != tuple(vol.shape3) or not np.allclose(mask.ras_from_ijk, vol.ras_from_ijk, atol=1e-3):
            raise InputError(f"{role} is not on its image's grid (shape {mask.shape3} vs {vol.shape3})",
                             _source(mask, role))
        if not (np.asarray(mask.data) > 0).any():
            raise InputError(f"{role} is empty (no voxel > 0)", _source(mask, role))
    a, b = _world_box(fixed), _world_box(moving)
    if np.any(a[1] < b[0]) or np.any(b[1] < a[0]):
        raise InputError("its field of view does not overlap the fixed image's anywhere (RAS boxes "
                         f"{np.round(b, 1).tolist()} vs {np.round(a, 1).tolist()} mm)", _source(moving, "moving image"))


def _is_ct(vol: Volume) -> bool:
    """An image in Hounsfield units (air near -1000): no receive bias to correct."""
    return float(np.min(vol.data)) < -500.0


def _is_slab(vol: Volume, other: Volume) -> bool:
    """``vol`` covers much less than ``other`` along its thinnest axis (a partial-coverage slab)."""
    ext = np.array(vol.shape3) * vol.voxel_mm
    other_ext = np.array(other.shape3) * other.voxel_mm
    return bool(ext.min() <= 0.6 * other_ext.min())


def _motion(fixed_from_moving, moving: Volume, moving_mask: Volume | None):
    """(shift mm of the moving image's (mask's) centre, rotation angle deg) of a RAS 4x4."""
    inside = None if moving_mask is None else np.argwhere(np.asarray(moving_mask.data) > 0)
    c = moving.center_ras if inside is None or not len(inside) else moving_mask.ijk_to_ras(inside.mean(axis=0))
    shift = float(np.linalg.norm(fixed_from_moving[:3, :3] @ c + fixed_from_moving[:3, 3] - c))
    angle = float(np.degrees(np.arccos(np.clip((np.trace(fixed_from_moving[:3, :3]) - 1) / 2, -1, 1))))
    return shift, angle


def _inverted(result: RigidResult, moving: Volume, moving_mask: Volume | None) -> RigidResult:
    """The result of the swapped registration, back in the caller's direction."""
    m = np.linalg.inv(result.fixed_from_moving)
    shift, angle = _motion(m, moving, moving_mask)
    return RigidResult(m, result.metric_initial, result.metric_final, result.converged, result.iterations,
                       dict(result.qc, shift_mm=shift, angle_deg=angle, slab_as_fixed=True))


def _register(fixed, moving, fixed_mask, moving_mask, init, progress, debias=None, ct=False, wide=False):
    """The registration proper: (RigidResult, list of detected problems). ``ct``: one image is a CT;
    ``wide``: the wider start search (WIDE_SEARCH)."""
    import SimpleITK as sitk
    cfg = dict(CONFIG, **WIDE_SEARCH) if wide else CONFIG
    prog = as_progress(progress)
    t0 = time.perf_counter()
    c0 = time.process_time()
    f_img, f_mask = _normalise(fixed, fixed_mask)
    m_img, m_mask = _normalise(moving, moving_mask)
    prog.update(0.02, "pyramid")
    full = _Level(f_img, m_img, f_mask, m_mask, None)
    # pyramid levels (coarsest first; a thin slab keeps MIN_LEVEL_VOXELS across it, see _axis_mm)
    levels, src = [], full
    for mm in sorted(cfg["levels_mm"]):  # each level from the next finer one (cheaper smoothing)
        src = _Level(src.f, src.m, src.fm, src.mm_mask, mm, smooth=src is not full)
        levels.insert(0, src)
    search = levels[0]
    # centring (moments on the masked coarse images: cheap and noise-robust); the coarse search starts
    # from several centrings (requested one first) and lets the metric choose
    bases = _centrings(search, init)
    base = bases[0]
    for level in levels[:-2]:  # search / multi-start levels (after the centring on the true masks)
        level.with_dilated_masks(cfg["coarse_mask_dilation"])
    # coarse search: rotations x (slab) shifts along the thin axis of the fixed slab
    thin, gap, thickness = _thin_axis(f_img, m_img)
    step = float(np.clip(thickness * SLAB_SHIFT_FRACTION, 5.0, max(gap / 4, 5.0)))
    shifts = [0.0] if thin is None else list(np.arange(-gap / 2, gap / 2 + 1e-6, step))
    angles = np.deg2rad(cfg["search_angles_deg"])
    grid = []
    for ax, ay, az, b in itertools.product(angles, angles, angles, bases):
        for s in (shifts if b is base else [0.0]):  # slab shifts from the requested centring only
            tx = sitk.Euler3DTransform(b)
            tx.SetRotation(float(ax), float(ay), float(az))
            if s:
                tx.SetTranslation((np.array(tx.GetTranslation()) + s * thin).tolist())
            grid.append(tx)
    prog.check()
    scored = [(float(v), tx) for v, tx in zip(_search_scores(search, grid), grid) if np.isfinite(v)]
    scored.sort(key=lambda x: x[0])
    # points where poses are compared: a box around the region of interest, or the slab's own box
    pts = _box_points(f_img, f_mask) if thin is None else _head_points(f_img, f_mask)
    # a search level coarser than the multi-start levels is cheap: a larger pool of grid points is
    # refined there by a local optimisation (a 20 deg grid point with a centring off by 15-20 mm is
    # often not among the best few raw scores, but its basin is far deeper), the best go on
    # (not for a slab: at 16 mm in-plane a thin slab is a featureless disc that scores wrong heights
    # along its normal best; its candidates go to 4 mm, where the anatomy decides)
    refine = len(levels) > 3 and thin is None
    n_starts = cfg["slab_starts"] if thin is not None else cfg["search_refine"] if refine else cfg["search_keep"]
    starts = []
    for v, tx in scored:  # distinct starts (> 15 mm apart over the box)
        if all(_distance_mm(tx, o, pts) > 15.0 for _, o in starts):
            starts.append((v, tx))
        if len(starts) >= n_starts:
            break
    if thin is not None:  # and the centrings themselves (the scanner geometry among them)
        starts += [(np.nan, b) for b in bases if all(_distance_mm(b, o, pts) > cfg["distinct_mm"] for _, o in starts)]
    prog.update(0.2, "multi-start")
    n_iter = [0]
    pool = [(None, sitk.Euler3DTransform(tx)) for _, tx in starts]  # (before the last level, current)
    if refine:
        refined = []
        for _, tx in starts:
            prog.check()
            t = sitk.Euler3DTransform(tx)
            val, _ = _optimise(levels[0], t, cfg["level_iters"][0], cfg["level_step_mm"][0],
                               cfg["level_min_step_mm"][0], cfg["level_samples"][0], n_iter)
            refined.append((val, tx, t))
        refined.sort(key=lambda x: x[0])
        pool = []
        for _, tx, t in refined:
            if all(_distance_mm(t, o, pts) > cfg["distinct_mm"] for _, o in pool):
                pool.append((tx, t))
            if len(pool) >= cfg["search_keep"]:
                break
    local = []
    for before, t in pool:
        prog.check()
        for k in range(1 if refine else 0, len(levels) - 2):  # the coarse levels, coarsest first
            # the previous (coarser) level's move is kept only if this level's metric agrees (a small
            # brain-masked blob at 16 mm can pull away from the optimum)
            if before is not None and _evaluate(levels[k], before) < _evaluate(levels[k], t):
                t = before
            before = sitk.Euler3DTransform(t)
            val, _ = _optimise(levels[k], t, cfg["level_iters"][k], cfg["level_step_mm"][k],
                               cfg["level_min_step_mm"][k], cfg["level_samples"][k], n_iter)
        local.append((val, t))
    local.sort(key=lambda x: x[0])
    mid = []
    # a runner-up goes on to 4 mm only if it is competitive at 8 mm (within mid_margin of the best MI)
    # and a distinct optimum (starts that converged together are one candidate)
    keep = []
    n_keep, margin = (len(local), 1.0) if thin is not None else (cfg["mid_keep"], cfg["mid_margin"])
    for x in local:
        if len(keep) < n_keep and x[0] <= local[0][0] * (1.0 - margin) \
                and all(_distance_mm(x[1], k[1], pts) > cfg["distinct_mm"] for k in keep):
            keep.append(x)
    for val, t in keep:
        prog.check()
        t = sitk.Euler3DTransform(t)
        v4, _ = _optimise(levels[-2], t, cfg["level_iters"][-2], cfg["level_step_mm"][-2],
                          cfg["level_min_step_mm"][-2], cfg["level_samples"][-2], n_iter)
        mid.append((v4, t))
    mid.sort(key=lambda x: x[0])
    best4 = mid[0][1]
    alternative_margin = float(mid[1][0] - mid[0][0]) if len(mid) > 1 else None
    alternative_distance = _distance_mm(mid[0][1], mid[1][1], pts) if len(mid) > 1 else None
    prog.update(0.5, "restarts")
    # restart consistency at 4 mm: two opposite perturbations of the 4 mm optimum must agree
    restart = [cfg[k][-2] for k in LEVEL_KEYS[1:]]  # iterations, step, min step, samples at 4 mm
    runs = []
    for sign in (1.0, -1.0):
        t = _perturbed(best4, *cfg["restart_perturbation"], sign)
        v4, stop4 = _optimise(levels[-2], t, *restart, counter=n_iter)
        runs.append((v4, t, stop4))
    restart_mm = _distance_mm(runs[0][1], runs[1][1], pts)
    if restart_mm > cfg["restart_tolerance_mm"]:
        # a restart may have stalled (step shrunk on a rough patch): continue each once with a fresh
        # step; a truly ambiguous optimum (flat metric) does not move and is still reported
        for k, (_, t, _) in enumerate(runs):
            v4, stop4 = _optimise(levels[-2], t, restart[0], restart[1] / 2, *restart[2:], counter=n_iter)
            runs[k] = (v4, t, stop4)
        restart_mm = _distance_mm(runs[0][1], runs[1][1], pts)
    if restart_mm > cfg["restart_tolerance_mm"]:
        # a thin slab has few voxels across it at 4 mm: both restarts continued at 2 mm must agree there
        for k, (_, t, _) in enumerate(runs):
            v2, stop2 = _optimise(levels[-1], t, cfg["level_iters"][-1], cfg["level_step_mm"][-1],
                                  cfg["level_min_step_mm"][-1], cfg["level_samples"][-1], n_iter)
            runs[k] = (v2, t, stop2)
        restart_mm = _distance_mm(runs[0][1], runs[1][1], pts)
    restart_centre_mm = _distance_mm(runs[0][1], runs[1][1], pts[:1])
    runs.sort(key=lambda x: x[0])
    tx2 = sitk.Euler3DTransform(runs[0][1])
    # the relative intensity drift (receive bias) estimated at the 4 mm optimum and divided out of the
    # moving image for the fine levels: MI's optimum otherwise drifts along the bias gradient
    # (again at 2 mm with the corrected image: the first estimate is made from a blurrier, less aligned one)
    # (``debias``: which image's intensity the other predicts: the caller's GRE, never a CT in HU)
    for level in (levels[-2], None):
        level = level or levels[-1]
        log_bias = None
        if debias == "moving":
            log_bias = _relative_log_bias(level.m, level.f, _inverse(tx2))
            m_img = m_img if log_bias is None else _debiased(m_img, log_bias)
        elif debias == "fixed":
            log_bias = _relative_log_bias(level.f, level.m, tx2)
            f_img = f_img if log_bias is None else _debiased(f_img, log_bias)
        if log_bias is not None:
            levels[-1] = _Level(f_img, m_img, f_mask, m_mask, cfg["levels_mm"][-1])
        # 2 mm from the 4 mm optimum: a short step, quickly relaxed (it is close)
        _optimise(levels[-1], tx2, cfg["level_iters"][-1], cfg["level_step_mm"][-1] / 2,
                  cfg["level_min_step_mm"][-1], cfg["level_samples"][-1], n_iter, cfg["final_relaxation"])
    full = _Level(f_img, m_img, f_mask, m_mask, None)
    prog.update(0.7, "full resolution")
    tx, start = sitk.Euler3DTransform(tx2), base
    edge_percentile = cfg["final_edge_percentile_ct" if ct else "final_edge_percentile"]
    full.with_moving_mask_fixed(tx).with_edge_mask(edge_percentile, tx, cfg["final_samples"])
    full.with_fixed_cropped()
    metric_initial = _evaluate(full, start, cfg["final_samples"])  # same samples as the final metric
    full.with_moving_cropped(tx)
    metric_final, stop = _optimise(full, tx, cfg["final_iters"], cfg["final_step_mm"],
                                   cfg["final_min_step_mm"], cfg["final_samples"], n_iter,
                                   cfg["final_relaxation"])
    # once more with half the step: on a thin slab the descent zigzags in its poorly constrained tilts and
    # relaxes its step to the minimum before it reaches the optimum
    for k in range(1, cfg["final_passes"]):
        t = sitk.Euler3DTransform(tx)
        v, st = _optimise(full, t, cfg["final_iters"], cfg["final_step_mm"] / (2 ** k),
                          cfg["final_min_step_mm"], cfg["final_samples"], n_iter, cfg["final_relaxation"])
        if v < metric_final:
            tx.SetParameters(t.GetParameters())
            metric_final, stop = v, st
    pyramid_mm = _distance_mm(tx, tx2, pts)
    converged = not stop.startswith("error") and "Maximum number of iterations" not in stop
    fixed_from_moving = _euler_ras(tx)
    # QC
    shift, angle = _motion(fixed_from_moving, moving, moving_mask)
    region = "the head inside the slab" if thin is not None else "a +-50 mm box about the fixed mask's centre" \
        if f_mask is not None else "a +-50 mm box about the fixed image's centre"
    qc = {"shift_mm": shift, "angle_deg": angle, "stop": stop,
          "qc_region": region,
          "restart_disagreement_mm": restart_mm, "restart_disagreement_centre_mm": restart_centre_mm,
          "pyramid_change_mm": pyramid_mm,
          "residual_mismatch": _unexplained_fraction(full, tx),
          "residual_mismatch_start": _unexplained_fraction(full, start),
          "mutual_information_nats": -metric_final, "mutual_information_start_nats": -metric_initial,
          "alternative_margin_nats": alternative_margin, "alternative_distance_mm": alternative_distance,
          "n_search": len(scored), "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
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
    if restart_mm > cfg["restart_tolerance_mm"]:
        problems.append("restarts disagree")
    if pyramid_mm > cfg["pyramid_tolerance_mm"]:
        problems.append("full resolution far from the 2 mm solution")
    prog.update(1.0, "done")
    return result, problems
