"""STN / SN / RN segmentation on QSM: atlas prior localized on the susceptibility map, then refined.

Everything happens on the QSM grid (the space of ``qsm``; RAS mm; χ in ppm):

1. Prior: CIT168 labels already warped onto the QSM grid (STN 16/116, SN 7+9/107+109, RN 8/108), or
   an ``AtlasPrior``: the same with the atlas and the registration, so that every move found below is
   composed with the registration and the atlas is read once (a label map resampled twice loses about
   half a voxel of its border: on a ~5 mm STN that is ~0.1 of Dice).
2. Localization: per side, the prior's STN+SN+RN complex is moved (translation + isotropic scale) to
   best explain the QSM as piecewise constant (Chan-Vese energy over a window), then fitted by an
   affine map (linear background + one level per nucleus by least squares, so independent of the
   contrast scale). A surgeon's seed (or box) pins a structure instead (searched inside its pin).
3. Refinement: region competition of 7 classes (background + 6 nuclei) by iterated conditional modes:
   Gaussian intensity term with each class's own level (re-estimated locally, within ~3 mm; the
   background's away from the partial-volume rim of the nuclei), a distance-to-localized-prior
   term, and a Potts smoothness term. STN and SN meet along the darker border between them because
   border voxels go to the background class or to the class whose mean is nearer. An unseeded STN
   only moves its border by one voxel around the affine-fitted prior and keeps the fitted shape,
   moved by the mean shift of that border only when the shift exceeds half a voxel (the border itself
   is the fallback when the shape fails a guard rail).
4. Guard rails per structure (volume range, χ range, contrast-to-noise, compactness, connectivity,
   left/right volume symmetry): when one trips, that structure keeps its prior and a message says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError, ProcessingError
from ..progress import as_progress
from ..volume import Volume, mask_box
from . import structures as S
from .prior import AtlasPrior

BACKGROUND = 0
DEBUG = False
SMOOTH_SIGMA_VOX = 0.0   # smoothing of χ (voxels) for the competition
INVALID_MARGIN_VOX = 2   # rim (voxels) around implausible χ left out
LOCALIZE_SMOOTH = 0.0    # smoothing of χ (voxels) for the localization


@dataclass
class NucleiSegmentation:
    """Result of ``segment_nuclei``.

    labelmap: uint8 Volume on the QSM grid, values ``structures.NAMES``: 1..6 = STN_L, STN_R, SN_L, SN_R,
    RN_L, RN_R, 7..10 = GPi_L, GPi_R, GPe_L, GPe_R. names: {value: name}. source: {name: "refined" |
    "prior" | "localized prior" | "empty"}. qsm: the χ map (ppm) the statistics are taken from. prior:
    the prior on the QSM grid (the same values).
    """
    labelmap: Volume
    names: dict
    messages: list = field(default_factory=list)
    source: dict = field(default_factory=dict)
    qsm: Volume | None = None
    prior: Volume | None = None
    timings: dict = field(default_factory=dict)
    localized: Volume | None = None   # the prior after localization on the QSM (values 1..6)

    def mask(self, name: str) -> np.ndarray:
        return np.asarray(self.labelmap.data) == S.VALUES[name]

    def centroid_ras(self, name: str) -> np.ndarray | None:
        m = self.mask(name)
        if not m.any():
            return None
        return self.labelmap.ijk_to_ras(np.argwhere(m).mean(axis=0))

    def stats(self, landmarks: dict | None = None, world_from_qsm=None) -> list[dict]:
        """One row per structure: volume (mm³), χ mean/median/peak (ppm; peak = 95th percentile),
        centroid in RAS mm and, with ``landmarks`` {"AC","PC","MS"}, in AC-PC coordinates (mm; origin
        mid-commissural point, x right, y anterior, z superior). ``world_from_qsm`` (4x4 RAS) maps the
        QSM space to the space of the landmarks and of the reported centroids (default: QSM space)."""
        world = np.eye(4) if world_from_qsm is None else np.asarray(world_from_qsm, float)
        voxel_mm3 = float(abs(np.linalg.det(self.labelmap.ras_from_ijk[:3, :3])))
        chi = None if self.qsm is None else np.asarray(self.qsm.data, float)
        rows = []
        for value, name in sorted(self.names.items()):
            m = np.asarray(self.labelmap.data) == value
            n = int(m.sum())
            row = {"structure": name, "label": int(value), "source": self.source.get(name, ""),
                   "voxels": n, "volume_mm3": round(n * voxel_mm3, 2)}
            if chi is not None:
                vals = chi[m]
                row["mean_chi_ppm"] = round(float(vals.mean()), 5) if n else float("nan")
                row["median_chi_ppm"] = round(float(np.median(vals)), 5) if n else float("nan")
                row["peak_chi_ppm"] = round(float(np.percentile(vals, 95)), 5) if n else float("nan")
            c = self.centroid_ras(name)
            c = None if c is None else world[:3, :3] @ c + world[:3, 3]
            for axis, v in zip("ras", c if c is not None else [np.nan] * 3):
                row[f"centroid_{axis}"] = round(float(v), 3)
            if landmarks:
                acpc = (acpc_coordinates(c, landmarks["AC"], landmarks["PC"], landmarks["MS"])
                        if c is not None else [np.nan] * 3)
                for axis, v in zip("xyz", acpc):
                    row[f"acpc_{axis}"] = round(float(v), 3)
            rows.append(row)
        return rows


def acpc_coordinates(point_ras, ac, pc, ms) -> np.ndarray:
    """AC-PC coordinates (mm) of a RAS point (``stereotaxy.acpc_coordinates``: origin at the
    mid-commissural point, +x right, +y anterior, +z superior)."""
    from ..stereotaxy.coordinates import acpc_coordinates as acpc_of
    return acpc_of(point_ras, ac, pc, ms)


# --------------------------------------------------------------------------------------------------
def prior_to_structures(prior_labels: np.ndarray, names=None) -> np.ndarray:
    """CIT168 label array -> array with the output values of ``names`` (default: every structure,
    ``structures.NAMES``; 0 elsewhere)."""
    out = np.zeros(prior_labels.shape, np.uint8)
    lab = np.rint(np.asarray(prior_labels)).astype(np.int32)
    for name, values in S.CIT168_VALUES.items():
        if names is None or name in names:
            out[np.isin(lab, values)] = S.VALUES[name]
    return out


def _ellipsoid(shape, center_ijk, semi_axes_vox) -> np.ndarray:
    idx = np.indices(shape, dtype=np.float32)
    r2 = sum(((idx[a] - center_ijk[a]) / max(semi_axes_vox[a], 0.5)) ** 2 for a in range(3))
    return r2 <= 1.0


def _transform_mask(mask: np.ndarray, center, scale: float, shift) -> np.ndarray:
    """Scale a binary mask about ``center`` (voxels) and shift it (voxels), nearest neighbour."""
    if scale == 1.0:
        out = mask
    else:
        c = np.asarray(center, float)
        inv = 1.0 / scale
        out = ndi.affine_transform(mask.astype(np.uint8), np.eye(3) * inv,
                                   offset=c - inv * c, order=0, mode="constant") > 0
    return _shift(out, shift)


def _shift(a: np.ndarray, shift) -> np.ndarray:
    """Integer shift without wrap-around."""
    shift = [int(s) for s in shift]
    if not any(shift):
        return a
    out = np.zeros_like(a)
    src, dst = [], []
    for s, n in zip(shift, a.shape):
        if s >= 0:
            src.append(slice(0, max(n - s, 0)))
            dst.append(slice(s, n))
        else:
            src.append(slice(-s, n))
            dst.append(slice(0, max(n + s, 0)))
    out[tuple(dst)] = a[tuple(src)]
    return out


def _chan_vese_score(chi_w: np.ndarray, labels_w: np.ndarray, n_classes: int) -> float:
    """Σ_c S_c² / n_c over the window: larger = smaller piecewise-constant residual."""
    n = np.bincount(labels_w, minlength=n_classes).astype(float)
    s = np.bincount(labels_w, weights=chi_w, minlength=n_classes)
    ok = n > 0
    return float((s[ok] ** 2 / n[ok]).sum())


def _compose(base: np.ndarray, masks: dict) -> np.ndarray:
    out = base.copy()
    for value, m in masks.items():
        out[m] = value
    return out


def _search(chi, window, masks: dict, fixed: np.ndarray, values: list, center, scales, radius: int,
            step: int, constraint=None):
    """Best (scale, shift) moving ``masks[values]`` together over ``fixed`` labels (Chan-Vese score)."""
    w_idx = np.nonzero(window.ravel())[0]
    chi_w = chi.ravel()[w_idx]
    best = (-np.inf, 1.0, (0, 0, 0))
    scaled = {s: {v: _transform_mask(masks[v], center, s, (0, 0, 0)) for v in values} for s in scales}
    for s in scales:
        offsets = range(-radius, radius + 1, step)
        for dx in offsets:
            for dy in offsets:
                for dz in offsets:
                    shift = (dx, dy, dz)
                    moved = {v: _shift(scaled[s][v], shift) for v in values}
                    if constraint is not None and not constraint(moved):
                        continue
                    lab = _compose(fixed, moved).ravel()[w_idx]
                    score = _chan_vese_score(chi_w, lab, 7)
                    if score > best[0]:
                        best = (score, s, shift)
    return best


# an unseeded STN's fitted shape follows the competition's border only when the border's mean shift
# exceeds this (voxels, of at least 1 mm: texture and QSM blur are in mm): 0.08-0.42 mm on 1 mm
# digital patients with a good fit, 0.67-1.19 mm where the side's affine fit left the STN off
# (ellipsoid cases)
STN_SHIFT_VOX = 0.5
PARTIAL_VOLUME_SIGMA_VOX = 0.3   # soft edge of a mask beyond its linear interpolation


def _soft(mask: np.ndarray) -> np.ndarray:
    """A binary mask with partial-volume edges; a float map is taken as already soft."""
    if mask.dtype.kind == "f":
        return mask.astype(np.float64, copy=False)
    return ndi.gaussian_filter(mask.astype(np.float64), PARTIAL_VOLUME_SIGMA_VOX)


def _fit_affine(chi, masks: list, window: np.ndarray, center, n_iter: int = 30):
    """Affine move of ``masks`` (together) best explaining χ in ``window`` as a linear background plus
    one level per mask (soft: binary masks get partial-volume edges, float maps are used as they are).
    Levels are solved by least squares at each step (variable projection), so the fit does not depend
    on the contrast scale; the 12 affine parameters
    by Levenberg-Marquardt. Returns (A, offset): a mask voxel x moves to the voxel y with
    x = center + A (y - center) + offset."""
    soft = [_soft(m) for m in masks]
    grads = [np.gradient(s) for s in soft]
    d = np.argwhere(window).astype(np.float64) - center
    y = chi[window]
    n = len(y)
    linear = [np.ones(n), d[:, 0], d[:, 1], d[:, 2]]

    def evaluate(A, off):
        xp = (center + d @ A.T + off).T
        B = np.column_stack(linear + [ndi.map_coordinates(s, xp, order=1, mode="constant") for s in soft])
        coef, *_ = np.linalg.lstsq(B, y, rcond=None)
        r = y - B @ coef
        return xp, B, coef, r, float(r @ r)

    A, off = np.eye(3), np.zeros(3)
    xp, B, coef, r, cost = evaluate(A, off)
    damping = 1e-3
    for _ in range(n_iter):
        g = np.zeros((n, 3))
        for k, gr in enumerate(grads):
            for a in range(3):
                g[:, a] += coef[len(linear) + k] * ndi.map_coordinates(gr[a], xp, order=1, mode="constant")
        J = np.column_stack([g[:, i] * d[:, j] for i in range(3) for j in range(3)] + [g[:, i] for i in range(3)])
        q, _ = np.linalg.qr(B)
        J -= q @ (q.T @ J)
        H, grad = J.T @ J, J.T @ r
        for _ in range(8):
            step = np.linalg.solve(H + damping * np.diag(np.diag(H) + 1e-12), grad)
            A2, off2 = A + step[:9].reshape(3, 3), off + step[9:]
            trial = evaluate(A2, off2)
            if trial[4] < cost:
                gain = (cost - trial[4]) / cost
                A, off = A2, off2
                xp, B, coef, r, cost = trial
                damping = max(damping / 3.0, 1e-6)
                break
            damping *= 4.0
        else:
            break
        if gain < 1e-5:
            break
    return A, off


def _pull_affine(A, off, center) -> np.ndarray:
    """4x4 pull-back of an ``_fit_affine`` move: voxel y reads the unmoved map at x = c + A (y - c) + off."""
    m = np.eye(4)
    m[:3, :3] = A
    m[:3, 3] = np.asarray(center, float) - np.asarray(A, float) @ np.asarray(center, float) + off
    return m


def _pull_scale_shift(center, scale: float, shift) -> np.ndarray:
    """4x4 pull-back of ``_transform_mask(mask, center, scale, shift)``."""
    c = np.asarray(center, float)
    return _pull_affine(np.eye(3) / scale, -np.asarray(shift, float) / scale, c)


class _PriorSampler:
    """Soft occupancy of each prior structure on the crop, pulled back by a 4x4 map of crop voxels
    (y -> x). With an ``AtlasPrior`` x is carried into the atlas through the registration and the
    atlas is read there, so the prior is sampled once whatever moves were found on the QSM; without
    one the prior masks (partial-volume edges) are read at x."""

    def __init__(self, masks: dict, atlas=None, lo=None):
        shape = next(iter(masks.values())).shape
        self.shape = shape
        self.coords = None
        if atlas is not None:
            self.coords = atlas.atlas_index(lo, shape)
            lab = prior_to_structures(atlas.atlas.data)
            self.maps = {v: (lab == v).astype(np.float32) for v in masks}
        else:
            self.maps = {v: _soft(m).astype(np.float32) for v, m in masks.items()}

    def sample(self, v, pull: np.ndarray, near: np.ndarray | None = None) -> np.ndarray:
        """Soft map of structure ``v`` pulled by ``pull``; only within the box of ``near`` (+3 voxels)
        when given (zero elsewhere)."""
        out = np.zeros(self.shape, np.float32)
        box = tuple(slice(0, n) for n in self.shape) if near is None else _box(near, 3)
        if box is None:
            return out
        idx = np.mgrid[box].reshape(3, -1).astype(np.float64)
        x = pull[:3, :3] @ idx + pull[:3, 3, None]
        if self.coords is not None:
            x = np.stack([ndi.map_coordinates(self.coords[a], x, order=1, mode="nearest") for a in range(3)])
        out[box] = ndi.map_coordinates(self.maps[v], x, order=1, mode="constant").reshape(
            [s.stop - s.start for s in box])
        return out


def _box(mask: np.ndarray, margin: int):
    if not mask.any():
        return None
    return mask_box(mask, margin)


def _plausible_affine(A) -> bool:
    """Within the spread of adult anatomy after an atlas registration: modest scaling and shear."""
    sv = np.linalg.svd(A, compute_uv=False)
    return bool(sv.min() > 0.7 and sv.max() < 1.4)


def _localize(chi, masks: dict, pinned: dict, voxel_mm, progress, sampler, valid=None, start_pull=None):
    """Move the prior masks onto the QSM. ``pinned`` {value: mask of allowed voxels} restrict a
    structure to stay around the surgeon's seed/box. ``start_pull`` (4x4): the pull-back that made
    ``masks`` from the sampler's prior (default identity: the masks are the prior). Returns ({value:
    localized mask}, {value: 4x4 pull-back of the unpinned ones into ``sampler``, the ``_PriorSampler``
    of the prior}). Each side (odd values = left) is localized as one complex."""
    out = dict(masks)
    pulls = {}
    vox = float(np.mean(voxel_mm))
    r_side = max(1, int(round(4.0 / vox)))
    r_one = max(1, int(round(2.0 / vox)))
    sides = [[v for v in sorted(out) if v % 2 == 1], [v for v in sorted(out) if v % 2 == 0]]
    for i, vals in enumerate(sides):
        progress.update(0.1 + 0.4 * i, "localizing the prior")
        free = [v for v in vals if v not in pinned and out[v].any()]
        if not free:
            continue
        union = np.any([out[v] for v in free], axis=0)
        center = np.argwhere(union).mean(axis=0)
        window = ndi.binary_dilation(union, iterations=r_side + max(1, int(round(3.0 / vox))))
        if valid is not None:
            window &= valid
        fixed = _compose(np.zeros(chi.shape, np.uint8), {v: out[v] for v in out if v not in free})
        # coarse then fine translation, a few isotropic scales
        _, s, sh = _search(chi, window, out, fixed, free, center, (0.85, 1.0, 1.15, 1.3), r_side, 2)
        base = {v: _transform_mask(out[v], center, s, sh) for v in free}
        _, s2, sh2 = _search(chi, window, base, fixed, free, center + np.array(sh), (1.0,), 1, 1)
        base = {v: _shift(base[v], sh2) for v in free}
        pull = _pull_scale_shift(center, s, sh) @ _pull_affine(np.eye(3), -np.asarray(sh2, float), np.zeros(3))
        if start_pull is not None:
            pull = np.asarray(start_pull, float) @ pull
        # then an affine fit of the side's nuclei together (local deformation left by the registration)
        union = np.any([base[v] for v in free], axis=0)
        center = np.argwhere(union).mean(axis=0)
        window = ndi.binary_dilation(union, iterations=max(1, int(round(5.0 / vox))))
        if valid is not None:
            window &= valid
        near = ndi.binary_dilation(union, iterations=3)
        soft = [sampler.sample(v, pull, near) for v in free]
        A, off = _fit_affine(chi, soft, window, center)
        if _plausible_affine(A):
            pull = pull @ _pull_affine(A, off, center)
            soft = [sampler.sample(v, pull, near) for v in free]
        soft = np.stack(soft)
        best = soft.argmax(axis=0)
        inside = soft.max(axis=0) > 0.5
        base = {v: (best == k) & inside if ((best == k) & inside).any() else base[v] for k, v in enumerate(free)}
        out.update(base)
        pulls.update({v: pull for v in free})
    # pinned structures: one at a time, twice, searched inside their pin
    for it in range(2):
        for v in sorted(pinned):
            if not out[v].any():
                continue
            progress.update(0.8 + 0.1 * it, "localizing each nucleus")
            center = np.argwhere(out[v]).mean(axis=0)
            window = ndi.binary_dilation(out[v], iterations=r_one + max(1, int(round(3.0 / vox))))
            if valid is not None:
                window &= valid
            fixed = _compose(np.zeros(chi.shape, np.uint8), {u: out[u] for u in out if u != v})
            fixed[out[v]] = 0
            pin = pinned[v]
            constraint = (lambda moved, pin=pin, v=v:
                          moved[v].any() and pin[moved[v]].mean() > 0.5)
            _, s, sh = _search(chi, window, out, fixed, [v], center, (0.9, 1.0, 1.1),
                               r_one if it == 0 else 1, 1, constraint)
            out[v] = _transform_mask(out[v], center, s, sh)
    return out, pulls


# local class levels (3 mm), background level away from the nuclei's partial-volume rim
ICM = {"beta": 0.6, "alpha_per_mm": 3.0, "tol_mm": 0.5, "n_iter": 6, "pooled_sigma": (0.01, 0.025),
       "local_sigma_mm": 3.0, "core_means": "background"}


def _class_means(chi, labels, classes, local_sigma_mm: float, voxel_mm, core_only: bool):
    """χ level of each class: {class: scalar or map}. ``core_only``: from voxels whose 6 neighbours
    share their class (partial-volume borders left out); ``local_sigma_mm`` > 0: a map, the Gaussian-
    weighted mean of the class's voxels nearby (slowly varying tissue, e.g. SNc/SNr or white matter
    next to thalamus), falling back to the class's global mean far from its voxels."""
    near = ndi.binary_dilation(labels > 0, iterations=3)
    means = {}
    for c in classes:
        sel = labels == c
        if c == BACKGROUND:
            sel &= near
        if core_only is True or (core_only == "background" and c == BACKGROUND):
            core = ndi.binary_erosion(labels == c) & sel
            sel = core if core.sum() >= 5 else sel
        if sel.sum() < 5:
            means[c] = None
            continue
        g = float(np.mean(chi[sel]))
        if local_sigma_mm > 0:
            sig = local_sigma_mm / np.asarray(voxel_mm, float)
            w = ndi.gaussian_filter(sel.astype(np.float64), sig, truncate=3.0)
            s = ndi.gaussian_filter(np.where(sel, chi, 0.0), sig, truncate=3.0)
            k = 0.05  # weight of the global mean (a few voxels' worth)
            means[c] = (s + k * g) / (w + k)
        else:
            means[c] = g
    return means


def _icm(chi, loc: dict, sigma: float, voxel_mm, allowed: dict, forced: dict, n_iter: int = 6,
         beta: float = 0.6, alpha_per_mm: float = 1.5, tol_mm: float = 1.0, pooled_sigma=False,
         class_sigma=False, local_sigma_mm: float = 0.0, core_means=False):
    """Region competition (background + nuclei) by iterated conditional modes. Returns labels, means."""
    values = sorted(loc)
    classes = [BACKGROUND] + values
    # distance (mm) outside each localized prior
    dist = {v: ndi.distance_transform_edt(~loc[v], sampling=voxel_mm) if loc[v].any()
            else np.full(chi.shape, np.inf) for v in values}
    prior_cost = {v: alpha_per_mm * np.maximum(dist[v] - tol_mm, 0.0) for v in values}
    labels = _compose(np.zeros(chi.shape, np.uint8), loc)
    any_struct = labels > 0
    ring = ndi.binary_dilation(any_struct, iterations=3) & ~any_struct
    means = {BACKGROUND: float(np.median(chi[ring])) if ring.any() else 0.0}
    for v in values:
        means[v] = float(np.median(chi[loc[v]])) if loc[v].any() else 0.0
    inv2s2 = 1.0 / (2.0 * sigma ** 2)
    kernel = ndi.generate_binary_structure(3, 1).astype(np.float32)
    kernel[1, 1, 1] = 0
    for it in range(n_iter):
        if pooled_sigma:
            fitted = np.zeros_like(chi)
            for c in classes:
                sel = labels == c
                fitted[sel] = np.broadcast_to(means[c], chi.shape)[sel]
            near = ndi.binary_dilation(labels > 0, iterations=3)
            sigma = float(np.clip(np.std((chi - fitted)[near]), pooled_sigma[0], pooled_sigma[1]))
            inv2s2 = 1.0 / (2.0 * sigma ** 2)
        sig = {c: sigma for c in classes}
        if class_sigma:
            for c in classes:
                sel = labels == c
                if c == BACKGROUND:
                    sel &= ndi.binary_dilation(labels > 0, iterations=3)
                if sel.sum() >= 10:
                    sig[c] = float(np.clip(np.std(chi[sel]), class_sigma[0], class_sigma[1]))
        costs = []
        for c in classes:
            if class_sigma:
                cost = (chi - means[c]) ** 2 / (2.0 * sig[c] ** 2) + np.log(sig[c] / sigma)
            else:
                cost = (chi - means[c]) ** 2 * inv2s2
            same = ndi.convolve((labels == c).astype(np.float32), kernel, mode="constant")
            cost = cost - beta * same
            if c != BACKGROUND:
                cost = cost + prior_cost[c]
                cost[~allowed[c]] = np.inf
            costs.append(cost)
        new = np.asarray(classes, np.uint8)[np.argmin(np.stack(costs), axis=0)]
        for v, m in forced.items():
            new[m] = v
        changed = int((new != labels).sum())
        labels = new
        for c, m in _class_means(chi, labels, classes, local_sigma_mm, voxel_mm, core_means).items():
            if m is not None:
                means[c] = m
        if DEBUG: print("ICM", it, changed, round(sigma, 4), {k: round(float(np.mean(v)), 3) for k, v in means.items()})
        if changed == 0:
            break
    return labels, means


def _largest_component(mask: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Largest 6-connected component (or the one holding ``keep`` voxels); fraction kept."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask, 1.0
    sizes = np.bincount(lab.ravel())[1:]
    if keep is not None and (keep & mask).any():
        best = int(np.bincount(lab[keep & mask]).argmax()) if (lab[keep & mask] > 0).any() else 0
        best = best if best > 0 else int(sizes.argmax()) + 1
    else:
        best = int(sizes.argmax()) + 1
    out = lab == best
    return out, float(sizes[best - 1] / sizes.sum())


def _compactness(mask: np.ndarray, voxel_mm) -> float:
    """Sphericity from voxel faces (1 for a ball in the limit; voxelised balls score ~0.6-0.7)."""
    v = mask.sum() * float(np.prod(voxel_mm))
    if v == 0:
        return 0.0
    area = 0.0
    vx, vy, vz = voxel_mm
    face = {0: vy * vz, 1: vx * vz, 2: vx * vy}
    m = np.pad(mask, 1).astype(np.int8)
    for ax in range(3):
        area += np.abs(np.diff(m, axis=ax)).sum() * face[ax]
    return float(np.pi ** (1 / 3) * (6 * v) ** (2 / 3) / area)


def _noise_sigma(chi: np.ndarray, region: np.ndarray) -> float:
    """Noise level: robust std of the Laplacian-like residual (chi - 6-neighbour mean) in region."""
    k = ndi.generate_binary_structure(3, 1).astype(float)
    k[1, 1, 1] = 0
    k /= k.sum()
    resid = chi - ndi.convolve(chi, k, mode="nearest")
    r = resid[region]
    if r.size < 20:
        return float(np.std(chi[region])) if r.size else 0.01
    mad = np.median(np.abs(r - np.median(r)))
    return float(1.4826 * mad / np.sqrt(1.0 + 1.0 / 6.0))


def _check_seed_names(names, source="seeds") -> None:
    unknown = sorted(set(names) - set(S.VALUES))
    if unknown:
        raise InputError(f"unknown seed label(s) {', '.join(map(repr, unknown))}; label each with one of "
                         f"{', '.join(S.NAMES.values())}", source)


def seeds_to_qsm(seeds: dict, qsm_from_world, source="seeds") -> dict:
    """Seeds given in another space (points, or box corners as rows) mapped into the QSM's own RAS by
    the 4x4 ``qsm_from_world``; labels that name no structure are refused, naming ``source``."""
    _check_seed_names(seeds, source)
    m = np.asarray(qsm_from_world, float)
    return {k: np.asarray(v, float) @ m[:3, :3].T + m[:3, 3] for k, v in seeds.items()}


def _parse_seeds(seeds, vol: Volume, origin) -> dict:
    """{name: point (3,) RAS | box: (2,3) opposite RAS corners of an axis-aligned box, or the (8,3)
    corners of an oriented one} -> {value: ("point", ijk) | ("box", lo, hi)} in crop voxel indices
    (the box's bounding box on the QSM grid, which may be oblique)."""
    out = {}
    _check_seed_names(seeds or {})
    for name, val in (seeds or {}).items():
        a = np.asarray(val, float)
        if a.shape == (3,):
            out[S.VALUES[name]] = ("point", vol.ras_to_ijk(a) - origin)
        elif a.shape in ((2, 3), (8, 3)):
            if len(a) == 2:
                a = np.array([[a[i, 0], a[j, 1], a[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
            ijk = vol.ras_to_ijk(a) - origin
            out[S.VALUES[name]] = ("box", ijk.min(axis=0), ijk.max(axis=0))
        else:
            raise InputError(f"seed {name}: expected a point (x,y,z) or a box (2 or 8 corners)", "seeds")
        if not np.isfinite(a).all():
            raise InputError(f"seed {name} is not finite", "seeds")
    return out


def segment_nuclei(qsm: Volume, prior_labels: Volume | AtlasPrior, seeds: dict | None = None,
                   progress=None) -> NucleiSegmentation:
    """Segment STN, SN and RN, and GPi and GPe (both sides) on ``qsm`` (χ in ppm, paramagnetic positive).

    prior_labels: CIT168 labels on the same grid (e.g. ``AtlasNormalization.warp_labels``), or an
    ``AtlasPrior`` (``prior.atlas_prior``): the same labels with the atlas and the registration, so
    the prior is read from the atlas once whatever moves are found on the QSM (sharper shapes).
    seeds: optional {"STN_L": (r, a, s), ...} RAS points (QSM space) inside the structure, or boxes
    [[r0, a0, s0], [r1, a1, s1]] (or the 8 corners of an oriented box) enclosing it; a seeded
    structure is placed there instead of where the prior says (a pallidal seed moves its side's
    GPi+GPe prior). The result lives on the QSM grid (see ``NucleiSegmentation``, values
    ``structures.NAMES``). The midbrain nuclei (this module) and the pallidum (``pallidum``) are
    segmented separately, each on its own crop, and merged (the midbrain's voxels first).
    """
    from .pallidum import segment_pallidum
    prog = as_progress(progress)
    _check_seed_names(seeds or {})
    group = lambda names: {k: v for k, v in (seeds or {}).items() if k in names.values()}  # noqa: E731
    mid = _segment_midbrain(qsm, prior_labels, group(S.MIDBRAIN_NAMES), prog.sub(0.0, 0.7))
    pal = segment_pallidum(qsm, prior_labels, group(S.PALLIDUM_NAMES), prog.sub(0.7, 1.0))
    labels = np.asarray(mid.labelmap.data).copy()
    free = labels == 0
    labels[free] = np.asarray(pal.labelmap.data)[free]
    if not (labels > 0).any():
        raise ProcessingError("segmentation produced no nucleus")

    def merged(a: Volume, b: Volume, name: str) -> Volume:
        out = np.asarray(a.data).copy()
        out[out == 0] = np.asarray(b.data)[out == 0]
        return qsm.with_data(out, name=name)

    timings = dict(mid.timings)
    timings["pallidum_s"] = pal.timings.get("total_s", 0.0)
    timings["total_s"] = round(mid.timings.get("total_s", 0.0) + timings["pallidum_s"], 3)
    prog.update(1.0, "done")
    return NucleiSegmentation(qsm.with_data(labels, name="nuclei"), dict(S.NAMES), mid.messages + pal.messages,
                              {**mid.source, **pal.source}, qsm, merged(mid.prior, pal.prior, "prior"), timings,
                              merged(mid.localized, pal.localized, "localized prior"))


def _segment_midbrain(qsm: Volume, prior_labels: Volume | AtlasPrior, seeds: dict | None = None,
                      progress=None) -> NucleiSegmentation:
    """STN, SN and RN (values 1-6) as described in the module docstring; ``segment_nuclei``'s arguments."""
    prog = as_progress(progress)
    t0 = time.perf_counter()
    atlas = None
    if isinstance(prior_labels, AtlasPrior):
        atlas, prior_labels = prior_labels, prior_labels.labels
    chi_full = np.asarray(qsm.data)
    if chi_full.ndim != 3:
        raise InputError(f"the QSM must be 3-D, got shape {chi_full.shape}", qsm.name or None)
    if not qsm.same_geometry(prior_labels):
        raise InputError("the prior labels are not on the QSM grid", prior_labels.name or None)
    voxel_mm = qsm.voxel_mm
    prior_full = prior_to_structures(prior_labels.data, S.MIDBRAIN_NAMES.values())
    messages: list[str] = []
    names = dict(S.MIDBRAIN_NAMES)
    prog.update(0.0, "prior")

    # crop around the prior nuclei and the seeds
    pts = [np.argwhere(prior_full > 0)]
    for val in (seeds or {}).values():
        a = np.atleast_2d(np.asarray(val, float))
        if a.shape[-1] == 3 and np.isfinite(a).all():
            pts.append(np.rint(qsm.ras_to_ijk(a)).astype(int))
    pts = np.concatenate([p.reshape(-1, 3) for p in pts])
    labelmap = np.zeros(qsm.shape3, np.uint8)
    if len(pts) == 0:
        messages.append("the prior holds none of STN/SN/RN and no seed was given: nothing segmented")
        return NucleiSegmentation(qsm.with_data(labelmap, name="nuclei"), names, messages,
                                  {n: "empty" for n in names.values()}, qsm,
                                  qsm.with_data(prior_full, name="prior"), {"total_s": 0.0},
                                  qsm.with_data(np.zeros(qsm.shape3, np.uint8), name="localized prior"))
    margin = np.ceil(14.0 / voxel_mm).astype(int)
    lo = np.maximum(pts.min(axis=0) - margin, 0)
    hi = np.minimum(pts.max(axis=0) + margin + 1, qsm.shape3)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    chi_raw = np.nan_to_num(chi_full[crop].astype(np.float64))
    chi = ndi.gaussian_filter(chi_raw, sigma=SMOOTH_SIGMA_VOX) if SMOOTH_SIGMA_VOX else chi_raw
    chi_loc = ndi.gaussian_filter(chi_raw, sigma=LOCALIZE_SMOOTH) if LOCALIZE_SMOOTH else chi_raw
    prior = prior_full[crop]
    seed_info = _parse_seeds(seeds, qsm, lo)

    masks = {v: prior == v for v in S.MIDBRAIN_NAMES}
    pinned, forced = {}, {}
    shape = chi.shape
    for v, info in seed_info.items():
        name = S.NAMES[v]
        semi = np.asarray(S.TEMPLATE_SEMI_AXES_MM[S.kind(name)]) / voxel_mm
        if info[0] == "point":
            p = info[1]
            center, pin_semi = p, semi + 3.0 / voxel_mm
        else:
            center, pin_semi = (info[1] + info[2]) / 2.0, (info[2] - info[1]) / 2.0 + 0.5
        # place the prior (or a template ellipsoid) at the seed
        if masks[v].any():
            c0 = np.argwhere(masks[v]).mean(axis=0)
            masks[v] = _shift(masks[v], np.rint(center - c0))
        if not masks[v].any():
            masks[v] = _ellipsoid(shape, center, semi)
        if info[0] == "box":
            box = np.zeros(shape, bool)
            b0 = np.clip(np.floor(info[1]).astype(int), 0, np.array(shape) - 1)
            b1 = np.clip(np.ceil(info[2]).astype(int) + 1, 1, shape)
            box[tuple(slice(a, b) for a, b in zip(b0, b1))] = True
            pinned[v] = box
        else:
            pinned[v] = _ellipsoid(shape, center, pin_semi)
            f = np.zeros(shape, bool)
            pi = np.clip(np.rint(center).astype(int), 0, np.array(shape) - 1)
            f[tuple(pi)] = True
            forced[v] = f
    for v in S.MIDBRAIN_NAMES:
        if not masks[v].any():
            messages.append(f"{S.NAMES[v]}: absent from the prior and not seeded: left empty")

    prog.update(0.05, "localizing the prior")
    valid = (chi_raw > S.CHI_VALID_PPM[0]) & (chi_raw < S.CHI_VALID_PPM[1])
    if INVALID_MARGIN_VOX:  # streaks, vessels, air edges: their rims are not nucleus either
        valid &= ~ndi.binary_dilation(~valid, iterations=INVALID_MARGIN_VOX)
    sampler = _PriorSampler(masks, atlas, lo)
    loc, pulls = _localize(chi_loc, masks, pinned, voxel_mm, prog.sub(0.05, 0.6), sampler, valid)
    t_loc = time.perf_counter()

    # noise and allowed regions
    union = np.any([m for m in loc.values()], axis=0)
    near = ndi.binary_dilation(union, iterations=max(1, int(round(6.0 / voxel_mm.mean()))))
    sigma_noise = max(_noise_sigma(chi_raw, near), 1e-4)
    sigma_model = max(np.std(chi[near & ~union]) if (near & ~union).any() else sigma_noise, 0.01)
    reach = max(1, int(round(4.0 / voxel_mm.mean())))
    allowed = {}
    for v, m in loc.items():
        k = S.kind(S.NAMES[v])
        lo_chi, hi_chi = S.VOXEL_CHI_PPM[k]
        # the thin STN (~5 mm) only moves its border by one voxel around the affine-fitted prior
        thin = k == "STN" and v not in pinned
        a = ndi.binary_dilation(m, iterations=1 if thin else reach) if m.any() else np.zeros(shape, bool)
        if thin:
            forced[v] = ndi.binary_erosion(m)
        a &= (chi <= hi_chi) & (chi >= lo_chi) & valid
        if v in pinned:
            a &= pinned[v] | m
        allowed[v] = a
    prog.update(0.65, "region competition")
    labels, means = _icm(chi, loc, sigma_model, voxel_mm, allowed, forced, **ICM)
    # an unseeded STN keeps its affine-fitted shape (the thin STN's voxel-wise border moves are dominated
    # by partial volume, texture and QSM blur), moved by the mean shift of the competition's border
    # when that exceeds what those produce (STN_SHIFT_VOX); the competition's border is the fallback
    candidates = {v: [labels == v] for v in loc}
    for v in loc:
        if S.kind(S.NAMES[v]) == "STN" and v in pulls and loc[v].any():
            candidates[v].insert(0, loc[v])
            if (labels == v).any():
                shift = np.argwhere(labels == v).mean(axis=0) - np.argwhere(loc[v]).mean(axis=0)
                if np.linalg.norm(shift * voxel_mm) > STN_SHIFT_VOX * max(float(np.mean(voxel_mm)), 1.0):
                    moved = pulls[v] @ _pull_affine(np.eye(3), -shift, np.zeros(3))
                    candidates[v].insert(0, sampler.sample(v, moved, ndi.binary_dilation(loc[v], iterations=3)) > 0.5)
    prog.update(0.85, "checks")

    # per-structure clean-up and guard rails
    out = np.zeros(shape, np.uint8)
    source = {}
    vol_mm3 = float(np.prod(voxel_mm))
    ring_all = ndi.binary_dilation(labels > 0, iterations=3) & (labels == 0) & ~union
    bg_level = float(np.median(chi[ring_all])) if ring_all.any() else float(np.mean(means[BACKGROUND]))
    results = {}
    side_shift = {}
    for parity in (0, 1):  # 1 = left (odd values), 0 = right
        vals = [v for v in loc if v % 2 == parity and v not in seed_info and masks[v].any()]
        before = np.concatenate([np.argwhere(masks[v]) for v in vals]) if vals else np.zeros((0, 3))
        after = np.concatenate([np.argwhere(loc[v]) for v in vals]) if vals else np.zeros((0, 3))
        side_shift[parity] = ((after.mean(axis=0) - before.mean(axis=0)) * voxel_mm
                              if len(before) and len(after) else np.zeros(3))

    def check(v, m):
        k = S.kind(S.NAMES[v])
        m, frac = _largest_component(m, forced.get(v))
        m = ndi.binary_fill_holes(m)
        problems = []
        volume = m.sum() * vol_mm3
        vr = S.VOLUME_RANGE_MM3[k]
        if not vr[0] <= volume <= vr[1]:
            problems.append(f"volume {volume:.0f} mm³ outside {vr[0]:.0f}-{vr[1]:.0f}")
        mean_chi = float(chi_raw[m].mean())
        cr = S.CHI_RANGE_PPM[k]
        if not cr[0] <= mean_chi <= cr[1]:
            problems.append(f"mean χ {mean_chi:.3f} ppm outside {cr[0]}-{cr[1]}")
        cnr = (float(chi[m].mean()) - bg_level) / sigma_noise
        if cnr < S.MIN_CNR:
            problems.append(f"contrast-to-noise {cnr:.1f} < {S.MIN_CNR}")
        if frac < 0.6:
            problems.append(f"fragmented (largest piece {100 * frac:.0f}%)")
        if v not in seed_info and masks[v].any():
            shift = (np.argwhere(m).mean(axis=0) - np.argwhere(masks[v]).mean(axis=0)) * voxel_mm
            excess = np.linalg.norm(shift - side_shift[v % 2])
            if np.linalg.norm(shift) > S.MAX_SHIFT_FROM_PRIOR_MM:
                problems.append(f"centroid {np.linalg.norm(shift):.1f} mm from the prior's "
                                f"(> {S.MAX_SHIFT_FROM_PRIOR_MM:.0f})")
            elif excess > S.MAX_SHIFT_WITHIN_SIDE_MM:
                problems.append(f"moved {excess:.1f} mm away from its neighbours "
                                f"(> {S.MAX_SHIFT_WITHIN_SIDE_MM:.1f})")
        comp = _compactness(m, voxel_mm)
        if comp < S.MIN_COMPACTNESS:
            problems.append(f"compactness {comp:.2f} < {S.MIN_COMPACTNESS}")
        return m, problems

    for v in sorted(loc):
        results[v] = (labels == v, ["no voxel won the competition"])
        for m in candidates[v]:
            if m.any():
                results[v] = check(v, m)
                if not results[v][1]:
                    break
    # left/right symmetry of volumes (only when both sides passed)
    for kname in ("STN", "SN", "RN"):
        vl, vr_ = S.VALUES[f"{kname}_L"], S.VALUES[f"{kname}_R"]
        if vl in results and vr_ in results and not results[vl][1] and not results[vr_][1]:
            a, b = results[vl][0].sum(), results[vr_][0].sum()
            ratio = max(a, b) / max(min(a, b), 1)
            if ratio > S.MAX_LR_VOLUME_RATIO:
                # blame the side further from its prior volume
                dev = {u: abs(np.log(max(results[u][0].sum(), 1) / max(loc[u].sum(), 1)))
                       for u in (vl, vr_)}
                worst = max(dev, key=dev.get)
                results[worst][1].append(f"left/right volume ratio {ratio:.1f} > {S.MAX_LR_VOLUME_RATIO}")
    for v in sorted(loc):
        name = S.NAMES[v]
        m, problems = results.get(v, (np.zeros(shape, bool), []))
        if not loc[v].any() and not m.any():
            source[name] = "empty"
            continue
        if problems:
            keep = masks[v] if masks[v].any() else loc[v]
            what = "seeded template" if v in seed_info else "prior"
            messages.append(f"{name}: {'; '.join(problems)}: kept the {what}")
            m = keep
            source[name] = what
        else:
            source[name] = "refined" + (" (seeded)" if v in seed_info else "")
        out[m & (out == 0)] = v
    labelmap[crop] = out
    prior_vol = qsm.with_data(prior_full, name="prior")
    prog.update(1.0, "done")
    t1 = time.perf_counter()
    timings = {"localize_s": round(t_loc - t0, 3), "total_s": round(t1 - t0, 3)}
    messages.append(f"noise σ ≈ {sigma_noise:.4f} ppm; background χ ≈ {bg_level:.4f} ppm")
    localized = np.zeros(qsm.shape3, np.uint8)
    localized[crop] = _compose(np.zeros(shape, np.uint8), loc)
    return NucleiSegmentation(qsm.with_data(labelmap, name="nuclei"), names, messages, source, qsm,
                              prior_vol, timings, qsm.with_data(localized, name="localized prior"))
