"""Robustness of segment_nuclei: low contrast, asymmetric anatomy, surgeon's seeds/boxes, guard rails."""
import numpy as np
import pytest

from QSMPlannerLib.progress import Cancelled, Progress
from QSMPlannerLib.segmentation import MIDBRAIN_NAMES as NAMES  # these cases hold the midbrain only
from QSMPlannerLib.segmentation import segment_nuclei
from QSMPlannerLib.segmentation.metrics import centroid_error_mm, dice
from QSMPlannerLib.segmentation.nuclei import prior_to_structures
from QSMPlannerLib.segmentation.synthetic import make_case
from QSMPlannerLib.volume import Volume


def _eval(case, seg):
    truth = prior_to_structures(case["truth"].data)
    lab = np.asarray(seg.labelmap.data)
    a = case["qsm"].ras_from_ijk
    return {n: (dice(lab == v, truth == v), centroid_error_mm(lab == v, truth == v, a)) for v, n in NAMES.items()}


def _true_centroids(case):
    truth = prior_to_structures(case["truth"].data)
    return {n: case["qsm"].ijk_to_ras(np.argwhere(truth == v).mean(axis=0)) for v, n in NAMES.items()}


def test_low_contrast_still_better_than_prior():
    case = make_case(seed=4, contrast=0.5, noise_ppm=0.015)
    seg = segment_nuclei(case["qsm"], case["prior"])
    ours = _eval(case, seg)
    prior = prior_to_structures(case["prior"].data)
    truth = prior_to_structures(case["truth"].data)
    for v, n in NAMES.items():
        assert ours[n][0] > dice(prior == v, truth == v), n
        assert ours[n][0] > 0.7, (n, ours[n])


def test_no_contrast_keeps_the_prior_and_says_so():
    """Nuclei invisible (χ equal to the background): the guard rails keep the prior."""
    case = make_case(seed=5, contrast=0.0, noise_ppm=0.01, vein=False)
    seg = segment_nuclei(case["qsm"], case["prior"])
    prior = prior_to_structures(case["prior"].data)
    lab = np.asarray(seg.labelmap.data)
    kept = [n for n in NAMES.values() if seg.source[n] == "prior"]
    assert len(kept) >= 5, seg.source
    for n in kept:
        v = [k for k, x in NAMES.items() if x == n][0]
        assert np.array_equal(lab == v, prior == v)
        assert any(m.startswith(n + ":") and "kept the prior" in m for m in seg.messages)


def test_asymmetric_patient():
    """Right nuclei displaced and enlarged relative to the (symmetric) prior: each side on its own."""
    case = make_case(seed=6, asymmetric=True)
    ours = _eval(case, segment_nuclei(case["qsm"], case["prior"]))
    for n in ("STN_R", "SN_R", "RN_R", "STN_L"):
        assert ours[n][0] > 0.8 and ours[n][1] < 1.0, (n, ours[n])


def test_seed_points_rescue_a_prior_far_off():
    """Prior 11 mm off (beyond the automatic search): seeds from the surgeon place the structures."""
    case = make_case(seed=7, prior_shift_mm=(0.0, 11.0, 0.0))
    auto = _eval(case, segment_nuclei(case["qsm"], case["prior"]))
    centroids = _true_centroids(case)
    rng = np.random.default_rng(0)
    seeds = {n: c + rng.uniform(-1.0, 1.0, 3) for n, c in centroids.items()}  # a click near the centre
    seg = segment_nuclei(case["qsm"], case["prior"], seeds=seeds)
    seeded = _eval(case, seg)
    for n in NAMES.values():
        assert seeded[n][0] > 0.75, (n, seeded[n])
        assert seeded[n][1] < 1.2, (n, seeded[n])
        assert seg.source[n] == "refined (seeded)"
    assert np.mean([seeded[n][1] for n in NAMES.values()]) < np.mean([auto[n][1] for n in NAMES.values()])
    assert np.mean([seeded[n][0] for n in NAMES.values()]) > np.mean([auto[n][0] for n in NAMES.values()])


def test_seeds_and_boxes_without_prior():
    """Empty prior: seed points (left) and boxes (right) from the surgeon give every structure."""
    case = make_case(seed=8)
    empty = Volume(np.zeros(case["prior"].shape3, np.int16), case["prior"].ras_from_ijk)
    truth = prior_to_structures(case["truth"].data)
    c = _true_centroids(case)
    seeds = {}
    for v, n in NAMES.items():
        if n.endswith("_L"):
            seeds[n] = c[n]
        else:
            idx = np.argwhere(truth == v)
            seeds[n] = np.array([case["qsm"].ijk_to_ras(idx.min(axis=0) - 1),
                                 case["qsm"].ijk_to_ras(idx.max(axis=0) + 1)])
    ours = _eval(case, segment_nuclei(case["qsm"], empty, seeds=seeds))
    for n in NAMES.values():
        assert ours[n][0] > 0.8 and ours[n][1] < 1.2, (n, ours[n])
    partial = segment_nuclei(case["qsm"], empty, seeds={"STN_L": c["STN_L"], "STN_R": c["STN_R"]})
    assert partial.source["SN_L"] == "empty" and partial.source["STN_L"].startswith("refined")
    assert any("SN_L" in m and "left empty" in m for m in partial.messages)


def test_vein_next_to_stn_is_not_taken():
    case = make_case(seed=1)
    seg = segment_nuclei(case["qsm"], case["prior"])
    lab = np.asarray(seg.labelmap.data)
    chi = np.asarray(case["chi_true"].data)
    assert not ((lab > 0) & (chi > 0.3)).any()


def test_progress_and_cancel():
    case = make_case(seed=1)
    seen = []
    segment_nuclei(case["qsm"], case["prior"], progress=Progress(lambda f, m: seen.append(f)))
    assert seen and seen[-1] == pytest.approx(1.0) and all(b >= a - 1e-9 for a, b in zip(seen, seen[1:]))
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        segment_nuclei(case["qsm"], case["prior"], progress=p)


def _ball_on_uneven_background(n=24, radius=4.5, sub=4):
    """χ of a 0.09 ppm ball with partial volume, dark tissue (-0.03) on one side, bright (+0.06) on
    the other; truth = voxel centres inside the ball."""
    c = (n - 1) / 2.0
    f = (np.arange(n * sub) + 0.5) / sub - 0.5
    x, y, z = np.meshgrid(f, f, f, indexing="ij")
    inside = ((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2) <= radius ** 2
    bg = np.where(x < c, -0.03, 0.06)
    fine = np.where(inside, 0.09, bg)
    chi = fine.reshape(n, sub, n, sub, n, sub).mean(axis=(1, 3, 5))
    i = np.indices((n, n, n)).astype(float)
    truth = ((i - c) ** 2).sum(axis=0) <= radius ** 2
    return chi, truth


def test_local_background_level_places_the_border_on_both_sides():
    """Nucleus between darker and brighter tissue: a background level taken locally (away from the
    partial-volume rim) puts the border half-way on each side; one global level cannot."""
    from QSMPlannerLib.segmentation.nuclei import _icm
    chi, truth = _ball_on_uneven_background()
    loc = {1: np.roll(truth, 1, axis=1)}          # prior one voxel off
    allowed = {1: np.ones(chi.shape, bool)}
    common = dict(n_iter=8, beta=0.6, alpha_per_mm=1.5, tol_mm=0.5, pooled_sigma=(0.01, 0.025))
    glob, _ = _icm(chi, loc, 0.02, np.ones(3), allowed, {}, **common)
    local, _ = _icm(chi, loc, 0.02, np.ones(3), allowed, {}, local_sigma_mm=3.0,
                    core_means="background", **common)
    d_glob, d_local = dice(glob == 1, truth), dice(local == 1, truth)
    assert d_local > 0.93, d_local
    assert d_local > d_glob + 0.02, (d_local, d_glob)
    bright = np.indices(chi.shape)[0] > chi.shape[0] // 2  # no leak into the bright tissue
    assert ((local == 1) & ~truth & bright).sum() <= 0.1 * truth.sum()


def test_noisy_stn_keeps_the_fitted_shape():
    """Heavy noise (0.03 ppm): an unseeded STN keeps the shape of its affine-fitted prior, only moved
    where the mean shift of its border band exceeds half a voxel (here the side's fit leaves it ~1 mm
    off), while SN and RN move their borders voxel by voxel."""
    case = make_case(seed=1, noise_ppm=0.03)
    seg = segment_nuclei(case["qsm"], case["prior"])
    lab, loc = np.asarray(seg.labelmap.data), np.asarray(seg.localized.data)
    truth = prior_to_structures(case["truth"].data)
    for n in ("STN_L", "STN_R"):
        v = [k for k, x in NAMES.items() if x == n][0]
        assert seg.source[n] == "refined"
        assert abs(int((lab == v).sum()) - int((loc == v).sum())) <= 0.08 * (loc == v).sum(), n
        # moved, not reshaped: Dice to the truth 0.775/0.807 -> 0.875/0.881 on this case
        assert dice(lab == v, truth == v) > max(0.85, dice(loc == v, truth == v) + 0.04), n
        assert centroid_error_mm(lab == v, truth == v, case["qsm"].ras_from_ijk) < 0.5, n
