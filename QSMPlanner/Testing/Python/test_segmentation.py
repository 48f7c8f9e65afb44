"""Segmentation of STN/SN/RN on a synthetic QSM with a displaced, shrunk atlas prior."""
import numpy as np
import pytest

from QSMPlannerLib.errors import InputError
from QSMPlannerLib.segmentation import (MIDBRAIN_NAMES, NAMES, read_seg_nrrd, segment_nuclei, write_seg_nrrd,
                                        write_stats_csv)
from QSMPlannerLib.segmentation.metrics import centroid_error_mm, dice, hausdorff95_mm, mean_surface_distance_mm
from QSMPlannerLib.segmentation.nuclei import prior_to_structures
from QSMPlannerLib.segmentation.synthetic import make_case
from QSMPlannerLib.volume import Volume


@pytest.fixture(scope="module")
def case():
    return make_case(seed=1)


@pytest.fixture(scope="module")
def seg(case):
    return segment_nuclei(case["qsm"], case["prior"])


def _scores(labels, truth, ras_from_ijk):
    out = {}
    for v, n in MIDBRAIN_NAMES.items():
        out[n] = (dice(labels == v, truth == v), centroid_error_mm(labels == v, truth == v, ras_from_ijk))
    return out


def test_refinement_beats_the_prior(case, seg):
    truth = prior_to_structures(case["truth"].data)
    prior = prior_to_structures(case["prior"].data)
    a = case["qsm"].ras_from_ijk
    ours = _scores(np.asarray(seg.labelmap.data), truth, a)
    base = _scores(prior, truth, a)
    for n in MIDBRAIN_NAMES.values():
        assert ours[n][0] > base[n][0] + 0.15, (n, ours[n], base[n])
        assert ours[n][1] < 0.5 * base[n][1], (n, ours[n], base[n])
        assert ours[n][0] > 0.8, (n, ours[n])
        assert ours[n][1] < 1.0, (n, ours[n])
        assert seg.source[n].startswith("refined")
    assert set(np.unique(seg.labelmap.data)) == {0, 1, 2, 3, 4, 5, 6}
    # this midbrain case has no pallidum in its prior: GPi/GPe are reported empty, not invented
    assert all(seg.source[n] == "empty" for n in ("GPi_L", "GPi_R", "GPe_L", "GPe_R"))
    assert any(m.startswith("GPi_L:") and "absent from the prior" in m for m in seg.messages)
    assert seg.labelmap.same_geometry(case["qsm"])


def test_stats_rows(case, seg):
    rows = seg.stats()
    assert [r["structure"] for r in rows] == list(NAMES.values())
    truth = prior_to_structures(case["truth"].data)
    chi = np.asarray(case["qsm"].data)
    for r in rows[:len(MIDBRAIN_NAMES)]:
        v = r["label"]
        assert r["volume_mm3"] == pytest.approx((np.asarray(seg.labelmap.data) == v).sum(), rel=1e-6)
        # nuclei are paramagnetic: mean χ well above background, SN brighter than STN
        assert r["mean_chi_ppm"] > 0.05
        true_c = case["qsm"].ijk_to_ras(np.argwhere(truth == v).mean(axis=0))
        got = np.array([r["centroid_r"], r["centroid_a"], r["centroid_s"]])
        assert np.linalg.norm(got - true_c) < 1.2
        assert r["peak_chi_ppm"] >= r["median_chi_ppm"]
    by = {r["structure"]: r for r in rows}
    assert by["SN_L"]["mean_chi_ppm"] > by["STN_L"]["mean_chi_ppm"]
    assert by["STN_L"]["centroid_r"] < 0 < by["STN_R"]["centroid_r"]
    # AC-PC: AC 12 mm anterior of PC on the A axis, MS above -> AC-PC coordinates = shifted RAS
    lm = {"AC": [0, 0, 0], "PC": [0, -24, 0], "MS": [0, -12, 40]}
    rows2 = seg.stats(landmarks=lm)
    for r in rows2[:len(MIDBRAIN_NAMES)]:
        assert r["acpc_x"] == pytest.approx(r["centroid_r"], abs=1e-6)
        assert r["acpc_y"] == pytest.approx(r["centroid_a"] + 12, abs=1e-6)
        assert r["acpc_z"] == pytest.approx(r["centroid_s"], abs=1e-6)
    _ = chi


def test_seg_nrrd_round_trip_with_slicerio(tmp_path, seg):
    import slicerio
    out = write_seg_nrrd(tmp_path / "nuclei.seg.nrrd", seg)
    s = slicerio.read_segmentation(str(out))
    assert [x["name"] for x in s["segments"]] == ["STN_L", "STN_R", "SN_L", "SN_R", "RN_L", "RN_R",
                                                   "GPi_L", "GPi_R", "GPe_L", "GPe_R"]
    stn = slicerio.segment_from_name(s, "STN_L")
    assert stn["terminology"]["category"][1] == "123037004"
    assert stn["terminology"]["typeModifier"][2] == "Left"
    lab, names = read_seg_nrrd(out)
    assert names == NAMES
    assert np.array_equal(np.asarray(lab.data), np.asarray(seg.labelmap.data))
    assert np.allclose(lab.ras_from_ijk, seg.labelmap.ras_from_ijk)
    assert not list(tmp_path.glob(".*part*"))


def test_stats_csv(tmp_path, seg):
    import csv
    p = write_stats_csv(tmp_path / "t.csv", seg.stats())
    rows = list(csv.DictReader(open(p)))
    assert [r["structure"] for r in rows] == list(NAMES.values())
    assert float(rows[0]["volume_mm3"]) > 0


def test_metrics_basic():
    a = np.zeros((20, 20, 20), bool)
    a[5:10, 5:10, 5:10] = True
    b = np.roll(a, 2, axis=0)
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 75 / 250)
    assert centroid_error_mm(a, b, np.diag([2.0, 1, 1, 1])) == pytest.approx(4.0)
    assert hausdorff95_mm(a, b, (1, 1, 1)) == pytest.approx(2.0)
    assert mean_surface_distance_mm(a, a, (1, 1, 1)) == 0.0
    # two one-voxel plates 2 voxels apart (3 mm on this axis): every border voxel is 3 mm from the other
    p, q = np.zeros((20, 20, 20), bool), np.zeros((20, 20, 20), bool)
    p[5, 4:14, 4:14] = True
    q[7, 4:14, 4:14] = True
    assert mean_surface_distance_mm(p, q, (1.5, 1, 1)) == pytest.approx(3.0)
    assert hausdorff95_mm(p, q, (1.5, 1, 1)) == pytest.approx(3.0)


def test_bad_input(case):
    other = Volume(np.asarray(case["prior"].data), case["prior"].ras_from_ijk + np.diag([0, 0, 0, 0])
                   + np.pad(np.eye(3)[:, :1] * 0, ((0, 1), (3, 0))))
    other.ras_from_ijk[0, 3] += 5.0
    with pytest.raises(InputError):
        segment_nuclei(case["qsm"], other)
    with pytest.raises(InputError):
        segment_nuclei(case["qsm"], case["prior"], seeds={"XYZ": (0, 0, 0)})


def test_affine_fit_recovers_a_stretched_shifted_pair_whatever_the_contrast():
    """Two touching blobs of different χ, the image stretched 12% along i and shifted 1.5 voxels:
    the fit moves the prior masks onto them, and halving the contrast changes nothing."""
    from QSMPlannerLib.segmentation.nuclei import _fit_affine, _PriorSampler, _pull_affine
    idx = np.indices((40, 40, 40), dtype=float)
    ell = lambda c, s, k=1.0: sum(((idx[a] - c[a]) / (s[a] * (k if a == 0 else 1))) ** 2 for a in range(3)) <= 1
    prior = [ell((20, 17, 20), (7, 3, 3)), ell((20, 23, 20), (5, 3, 3))]
    true_c = [(21.5, 17, 20), (21.5, 23, 20)]
    truth = [ell(c, (7, 3, 3) if k == 0 else (5, 3, 3), 1.12) for k, c in enumerate(true_c)]
    truth[1] &= ~truth[0]
    rng = np.random.default_rng(0)
    base = -0.02 + 0.09 * truth[0] + 0.15 * truth[1] + rng.normal(0, 0.01, idx.shape[1:])
    window = np.zeros(idx.shape[1:], bool)
    window[6:34, 8:32, 12:28] = True
    center = np.argwhere(prior[0] | prior[1]).mean(axis=0)
    fits = [_fit_affine(scale * base, prior, window, center) for scale in (1.0, 0.5)]
    for A, off in fits:
        assert A[0, 0] == pytest.approx(1 / 1.12, abs=0.03) and off[0] == pytest.approx(-1.5, abs=0.3)
        moved = _PriorSampler(dict(enumerate(prior)))
        for k, (p, t) in enumerate(zip(prior, truth)):
            assert dice(p, t) < 0.86
            assert dice(moved.sample(k, _pull_affine(A, off, center)) > 0.5, t) > 0.93
    np.testing.assert_allclose(fits[0][0], fits[1][0], atol=0.02)
    np.testing.assert_allclose(fits[0][1], fits[1][1], atol=0.1)
