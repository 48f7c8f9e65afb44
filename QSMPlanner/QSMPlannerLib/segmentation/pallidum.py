"""GPi and GPe on QSM: the CIT168 pallidum prior localized on the susceptibility map, the pallidum's
outer border by region competition, and the GPi/GPe border on the medial medullary lamina.

The globus pallidus is among the most iron-rich structures of the brain, so QSM shows it with a
contrast T1 and T2 lack: its borders with the internal capsule and the putamen, and the thin
myelinated medial medullary lamina between its internal (GPi) and external (GPe) segments, a darker
line on susceptibility contrast. QSM separated GPi from GPe with clearer borders than T2*w, R2*, SWI
or phase (NMR Biomed 33:e4382, 2020, doi:10.1002/nbm.4382); the lamina was delineated on phase
(PADRE) imaging in 84 % of controls and 90 % of Parkinson's patients and never on T2w (Ide et al.,
Magn Reson Med Sci 16:304-310, 2017, doi:10.2463/mrms.mp.2015-0091); susceptibility-sensitive
contrasts showed the pallidal laminae best at 7 T (Front Hum Neurosci 8:876, 2014,
doi:10.3389/fnhum.2014.00876). See docs/targets.md for these and the contrary evidence.

Per side, on a crop of the QSM grid around the prior (RAS mm; χ in ppm):

1. Prior: CIT168 GPe 5/105 and GPi 6/106 (``AtlasPrior`` or labels on the QSM grid), optionally moved
   by a surgeon's seed (a point or box for GPi_L ... GPe_R: the side's GPi+GPe prior is translated so
   that the seeded segment's centroid sits at the seed).
2. Localization: the side's GPi+GPe complex moved (translation + isotropic scale, Chan-Vese), then
   affine-fitted (linear background + one level per segment), as for the midbrain nuclei
   (``nuclei._localize``; the atlas is sampled once through the composed moves).
3. Outer border: region competition pallidum vs background (``nuclei._icm``: local levels, so the
   border sits half-way between the pallidum and what lies beside it: capsule, putamen).
4. Inner border: watershed of -χ inside the pallidum from the cores of the localized GPi and GPe (their
   voxels a few mm from the other segment), so the two meet on the lamina's dark line; the relief is
   tilted towards the localized border (``LAMINA_PRIOR_PPM_PER_MM``) where the lamina is faint.
5. Guard rails (volume, χ, contrast-to-noise, compactness, shift from the prior, left/right volume
   ratio): a segment that trips one keeps its localized prior (else the prior) and a message says so.
"""
from __future__ import annotations

import time

import numpy as np
from scipy import ndimage as ndi

from ..progress import as_progress
from ..volume import Volume
from . import structures as S
from .nuclei import (ICM, INVALID_MARGIN_VOX, NucleiSegmentation, _compactness, _icm, _largest_component,
                     _localize, _noise_sigma, _pull_affine, _PriorSampler, prior_to_structures)
from .prior import AtlasPrior

CROP_MARGIN_MM = 9.0           # around the side's prior (search 4 mm + window 3 mm + rim)
BORDER_REACH_MM = 3.0          # the outer border moves at most this far from the localized prior
MARKER_MARGIN_MM = (3.0, 2.0, 1.0)   # watershed markers: localized voxels this far from the other segment
LAMINA_PRIOR_PPM_PER_MM = 0.05   # tilt of the -χ relief towards the localized GPi/GPe border (texture: ~0.015)



def _side_values(parity: int) -> tuple[int, int]:
    """(GPi value, GPe value) of a side: parity 1 = left."""
    side = "L" if parity == 1 else "R"
    return S.VALUES[f"GPi_{side}"], S.VALUES[f"GPe_{side}"]


def _seed_shift_vox(seeds: dict, prior: np.ndarray, values, vol: Volume, origin) -> np.ndarray | None:
    """Voxel shift moving the side's prior so that each seeded segment's centroid sits at its seed
    (a point, or a box's centre; the mean over the seeded segments)."""
    shifts = []
    for v in values:
        name = S.NAMES[v]
        if name not in seeds or not (prior == v).any():
            continue
        a = np.asarray(seeds[name], float)
        centre = a if a.shape == (3,) else a.reshape(-1, 3).mean(axis=0)
        shifts.append(vol.ras_to_ijk(centre) - origin - np.argwhere(prior == v).mean(axis=0))
    return np.mean(shifts, axis=0) if shifts else None


def _split_on_lamina(chi, pallidum, gpi_loc, gpe_loc, voxel_mm) -> tuple[np.ndarray, np.ndarray]:
    """(GPi, GPe) masks splitting ``pallidum``: watershed of -χ (the lamina is a ridge) tilted towards
    the localized border, flooded from the localized segments' voxels at least ``MARKER_MARGIN_MM`` from
    the other segment (so that no marker lies across a lamina a few mm off the localized border)."""
    from skimage.segmentation import watershed
    d_gpi = ndi.distance_transform_edt(~gpi_loc, sampling=voxel_mm)
    d_gpe = ndi.distance_transform_edt(~gpe_loc, sampling=voxel_mm)
    markers = np.zeros(chi.shape, np.int32)
    for k, m, d_other in ((1, gpi_loc, d_gpe), (2, gpe_loc, d_gpi)):
        for margin in MARKER_MARGIN_MM:
            core = m & pallidum & (d_other >= margin)
            if core.any():
                markers[core] = k
                break
    if not (markers == 1).any() or not (markers == 2).any():
        return gpi_loc & pallidum, gpe_loc & pallidum
    to_border = np.abs(d_gpi - d_gpe) / 2.0
    relief = -chi - LAMINA_PRIOR_PPM_PER_MM * to_border
    lab = watershed(relief, markers, mask=pallidum)
    return lab == 1, lab == 2


def segment_pallidum(qsm: Volume, prior_labels: Volume | AtlasPrior, seeds: dict | None = None,
                     progress=None) -> NucleiSegmentation:
    """GPi and GPe of both sides on ``qsm`` (χ ppm); the arguments as ``nuclei.segment_nuclei`` (seeds
    named GPi_L, GPi_R, GPe_L, GPe_R; QSM-space RAS points or boxes). Returns a ``NucleiSegmentation``
    with the values ``structures.PALLIDUM_NAMES`` (7-10) on the QSM grid."""
    prog = as_progress(progress)
    t0 = time.perf_counter()
    atlas = None
    if isinstance(prior_labels, AtlasPrior):
        atlas, prior_labels = prior_labels, prior_labels.labels
    names = dict(S.PALLIDUM_NAMES)
    prior_full = prior_to_structures(prior_labels.data, names.values())
    chi_full = np.asarray(qsm.data)
    voxel_mm = qsm.voxel_mm
    vox = float(np.mean(voxel_mm))
    labelmap = np.zeros(qsm.shape3, np.uint8)
    localized = np.zeros(qsm.shape3, np.uint8)
    messages, source = [], {}
    seeds = seeds or {}
    for i, parity in enumerate((1, 0)):
        prog.update(0.5 * i, "pallidum: localizing the prior")
        values = _side_values(parity)
        present = [v for v in values if (prior_full == v).any()]
        if not present:
            for v in values:
                source[names[v]] = "empty"
                messages.append(f"{names[v]}: absent from the prior: left empty")
            continue
        # crop around the side's prior (and its seeds)
        pts = [np.argwhere(np.isin(prior_full, values))]
        for v in values:
            if names[v] in seeds:
                pts.append(np.rint(qsm.ras_to_ijk(np.asarray(seeds[names[v]], float).reshape(-1, 3))).astype(int))
        pts = np.concatenate(pts)
        margin = np.ceil(CROP_MARGIN_MM / voxel_mm).astype(int)
        lo = np.maximum(pts.min(axis=0) - margin, 0)
        hi = np.minimum(pts.max(axis=0) + margin + 1, qsm.shape3)
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        chi = np.nan_to_num(chi_full[crop].astype(np.float64))
        prior = prior_full[crop]
        masks = {v: prior == v for v in values}
        valid = (chi > S.PALLIDUM_CHI_VALID_PPM[0]) & (chi < S.PALLIDUM_CHI_VALID_PPM[1])
        valid &= ~ndi.binary_dilation(~valid, iterations=INVALID_MARGIN_VOX)
        sampler = _PriorSampler(masks, atlas, lo)
        start = None
        shift = _seed_shift_vox(seeds, prior, values, qsm, lo)
        if shift is not None:
            start = _pull_affine(np.eye(3), -shift, np.zeros(3))
            masks = {v: sampler.sample(v, start) > 0.5 for v in values}
        loc, _pulls = _localize(chi, masks, {}, voxel_mm, prog.sub(0.5 * i, 0.5 * i + 0.3), sampler, valid,
                                start_pull=start)
        gpi_v, gpe_v = values
        union = loc[gpi_v] | loc[gpe_v]
        if not union.any():
            for v in values:
                source[names[v]] = "empty"
                messages.append(f"{names[v]}: the localized prior is empty: left empty")
            continue
        prog.update(0.5 * i + 0.3, "pallidum: borders")
        # outer border: pallidum vs background
        near = ndi.binary_dilation(union, iterations=max(1, int(round(6.0 / vox))))
        sigma_noise = max(_noise_sigma(chi, near), 1e-4)
        sigma_model = max(np.std(chi[near & ~union]) if (near & ~union).any() else sigma_noise, 0.01)
        lo_chi, hi_chi = S.VOXEL_CHI_PPM["GPi"]
        allowed = ndi.binary_dilation(union, iterations=max(1, int(round(BORDER_REACH_MM / vox))))
        allowed &= (chi >= lo_chi) & (chi <= hi_chi) & valid
        pooled = 1
        labels, _means = _icm(chi, {pooled: union}, sigma_model, voxel_mm, {pooled: allowed}, {}, **ICM)
        pallidum = ndi.binary_fill_holes(labels == pooled)
        # inner border on the lamina
        gpi, gpe = _split_on_lamina(chi, pallidum, loc[gpi_v], loc[gpe_v], voxel_mm)
        ring = ndi.binary_dilation(pallidum, iterations=3) & ~pallidum & ~union
        bg_level = float(np.median(chi[ring])) if ring.any() else float(np.median(chi[near & ~union]))
        results = {}
        for v, m in ((gpi_v, gpi), (gpe_v, gpe)):
            results[v] = _checked(v, m, loc[v], masks[v], chi, bg_level, sigma_noise, voxel_mm)
        out = np.zeros(chi.shape, np.uint8)
        for v in values:
            m, problems, kept = results[v]
            if problems:
                messages.append(f"{names[v]}: {'; '.join(problems)}: kept the {kept}")
                source[names[v]] = kept
            else:
                source[names[v]] = "refined"
            out[m & (out == 0)] = v
        region = labelmap[crop]
        region[(out > 0) & (region == 0)] = out[(out > 0) & (region == 0)]
        loc_region = localized[crop]
        for v in values:
            loc_region[loc[v] & (loc_region == 0)] = v
    _symmetry(labelmap, messages)
    prog.update(1.0, "pallidum done")
    return NucleiSegmentation(qsm.with_data(labelmap, name="pallidum"), names, messages, source, qsm,
                              qsm.with_data(prior_full, name="prior"),
                              {"total_s": round(time.perf_counter() - t0, 3)},
                              qsm.with_data(localized, name="localized prior"))


def _checked(v, m, loc, prior, chi, bg_level, sigma_noise, voxel_mm):
    """(mask, problems, what was kept): ``m`` cleaned (largest piece, holes filled) when it passes the
    guard rails, else the localized prior when that passes, else the prior."""
    k = S.kind(S.NAMES[v])
    vol_mm3 = float(np.prod(voxel_mm))

    def problems_of(mask, frac):
        out = []
        volume = mask.sum() * vol_mm3
        vr = S.VOLUME_RANGE_MM3[k]
        if not vr[0] <= volume <= vr[1]:
            out.append(f"volume {volume:.0f} mm³ outside {vr[0]:.0f}-{vr[1]:.0f}")
            return out
        mean_chi = float(chi[mask].mean())
        cr = S.CHI_RANGE_PPM[k]
        if not cr[0] <= mean_chi <= cr[1]:
            out.append(f"mean χ {mean_chi:.3f} ppm outside {cr[0]}-{cr[1]}")
        cnr = (mean_chi - bg_level) / sigma_noise
        if cnr < S.MIN_CNR:
            out.append(f"contrast-to-noise {cnr:.1f} < {S.MIN_CNR}")
        if frac < 0.6:
            out.append(f"fragmented (largest piece {100 * frac:.0f}%)")
        if prior.any():
            shift = np.linalg.norm((np.argwhere(mask).mean(axis=0) - np.argwhere(prior).mean(axis=0)) * voxel_mm)
            if shift > S.MAX_SHIFT_FROM_PRIOR_MM:
                out.append(f"centroid {shift:.1f} mm from the prior's (> {S.MAX_SHIFT_FROM_PRIOR_MM:.0f})")
        comp = _compactness(mask, voxel_mm)
        if comp < S.MIN_COMPACTNESS:
            out.append(f"compactness {comp:.2f} < {S.MIN_COMPACTNESS}")
        return out

    if not m.any():
        problems = ["no voxel left after the borders"]
    else:
        m, frac = _largest_component(m)
        m = ndi.binary_fill_holes(m)
        problems = problems_of(m, frac)
        if not problems:
            return m, [], ""
    if loc.any() and not problems_of(loc, 1.0):
        return loc, problems, "localized prior"
    return prior, problems, "prior"


def _symmetry(labelmap, messages) -> None:
    """Left/right volume ratio of GPi and of GPe: only reported (either side may be the odd one)."""
    for kind in ("GPi", "GPe"):
        a = int((labelmap == S.VALUES[f"{kind}_L"]).sum())
        b = int((labelmap == S.VALUES[f"{kind}_R"]).sum())
        if a and b and max(a, b) / min(a, b) > S.MAX_LR_VOLUME_RATIO:
            messages.append(f"{kind}: left/right volume ratio {max(a, b) / min(a, b):.1f} > "
                            f"{S.MAX_LR_VOLUME_RATIO}: check both sides")
