"""GPi/GPe segmentation on QSM: atlas-shaped cases, the GPi/GPe border on the lamina, seeds, guard rails,
and the midbrain result independent of the pallidum."""
import numpy as np
import pytest

from QSMPlannerLib.segmentation import (MIDBRAIN_NAMES, PALLIDUM_NAMES, read_seg_nrrd, segment_nuclei,
                                        segment_pallidum, write_seg_nrrd)
from QSMPlannerLib.segmentation.metrics import centroid_error_mm, dice
from QSMPlannerLib.segmentation.nuclei import prior_to_structures
from QSMPlannerLib.segmentation.synthetic import make_atlas_case
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix

PALLIDUM_BOX = ((-36.0, -20.0, -14.0), (36.0, 16.0, 14.0))   # the pallidum with 8 mm around it


def _scores(lab, truth, ras_from_ijk, names=PALLIDUM_NAMES):
    return {n: (dice(lab == v, truth == v), centroid_error_mm(lab == v, truth == v, ras_from_ijk))
            for v, n in names.items()}


@pytest.fixture(scope="module")
def case():
    """CIT168 moved by a random affine (2 mm, 3 degrees, +-8 % about the midbrain: the pallidum, ~20 mm
    away, moves by up to ~3 mm): the truth; the unmoved atlas: the prior."""
    return make_atlas_case(seed=3, box_ras=PALLIDUM_BOX, warp_mm=0.0, max_rot_deg=3.0, max_shift_mm=2.0,
                           scale_range=(0.92, 1.08))


def test_pallidum_beats_the_prior_on_an_atlas_shaped_case(case):
    seg = segment_pallidum(case["qsm"], case["prior"])
    truth, prior = prior_to_structures(case["truth"].data), prior_to_structures(case["prior"].data)
    a = case["qsm"].ras_from_ijk
    ours, base = _scores(np.asarray(seg.labelmap.data), truth, a), _scores(prior, truth, a)
    for n in PALLIDUM_NAMES.values():
        assert ours[n][0] >= 0.85 and ours[n][0] > base[n][0], (n, ours[n], base[n])
        assert ours[n][1] <= 0.7 and ours[n][1] < base[n][1], (n, ours[n], base[n])
        assert seg.source[n] == "refined"
    assert set(np.unique(seg.labelmap.data)) == {0, 7, 8, 9, 10}


def _lamina_case(lamina_x_mm: float, lamina_chi: float = -0.03, seed: int = 0):
    """A right pallidum (ellipsoid, semi-axes 8, 9, 5 mm) centred at (18, -2, -2) RAS, split by the plane
    x = 18 + ``lamina_x_mm``: GPi medial (x smaller), GPe lateral, both at 0.17 ppm (only the lamina, a 1 mm
    sheet of ``lamina_chi`` on that plane, tells them apart). The prior splits it at x = 18."""
    rng = np.random.default_rng(seed)
    shape = (40, 36, 28)
    m = ras_from_ijk_matrix([1.0] * 3, origin=(-2.0, -20.0, -16.0))
    ras = Volume(np.zeros(shape, np.uint8), m).voxel_ras_grid()
    inside = (((ras[..., 0] - 18.0) / 8.0) ** 2 + ((ras[..., 1] + 2.0) / 9.0) ** 2
              + ((ras[..., 2] + 2.0) / 5.0) ** 2) <= 1
    x = ras[..., 0] - 18.0
    truth = np.where(inside, np.where(x < lamina_x_mm, 106, 105), 0)
    prior = np.where(inside, np.where(x < 0.0, 106, 105), 0)
    chi = np.where(inside, 0.17, -0.02) + rng.normal(0.0, 0.01, shape)
    sheet = inside & (np.abs(x - lamina_x_mm) < 0.5)
    chi[sheet] = lamina_chi + rng.normal(0.0, 0.01, int(sheet.sum()))
    truth[sheet] = 0
    vol = lambda a, n: Volume(a.astype(np.float32 if n == "qsm" else np.int16), m, n)  # noqa: E731
    return {"qsm": vol(chi, "qsm"), "truth": vol(truth, "truth"), "prior": vol(prior, "prior")}


def test_gpi_gpe_border_moves_to_the_lamina():
    """Lamina 2 mm lateral of the prior's GPi/GPe border: the segmented border follows the dark sheet."""
    c = _lamina_case(2.0)
    seg = segment_pallidum(c["qsm"], c["prior"])
    lab, truth = np.asarray(seg.labelmap.data), prior_to_structures(c["truth"].data)
    prior = prior_to_structures(c["prior"].data)
    assert dice(lab == 8, truth == 8) > 0.93 > dice(prior == 8, truth == 8) + 0.05
    assert dice(lab == 10, truth == 10) > 0.9
    # the voxels between the prior's border and the lamina are GPi, as in the truth
    x = c["qsm"].voxel_ras_grid()[..., 0] - 18.0
    between = (truth == 8) & (x > 0.5) & (x < 1.5)
    assert between.any() and (lab[between] == 8).mean() > 0.9
    # no lamina (uniform pallidum): the border stays with the prior's
    flat = segment_pallidum(*(lambda d: (d["qsm"], d["prior"]))(_lamina_case(2.0, lamina_chi=0.17)))
    flat_lab = np.asarray(flat.labelmap.data)
    assert dice(flat_lab == 8, prior == 8) > 0.9


def test_a_pallidal_seed_moves_a_prior_far_off(case):
    """The prior 10 mm posterior (beyond the automatic search): a GPi_R seed at the true GPi places it."""
    truth = prior_to_structures(case["truth"].data)
    shifted = np.zeros_like(np.asarray(case["prior"].data))
    shifted[:, :-10] = np.asarray(case["prior"].data)[:, 10:]        # 10 voxels (mm) posterior
    prior = case["prior"].with_data(shifted)
    qsm = case["qsm"]
    auto = np.asarray(segment_pallidum(qsm, prior).labelmap.data)
    seed = qsm.ijk_to_ras(np.argwhere(truth == 8).mean(axis=0))
    seeded = segment_pallidum(qsm, prior, seeds={"GPi_R": seed})
    lab = np.asarray(seeded.labelmap.data)
    for v in (8, 10):           # the seed moves the right GPi and GPe together
        assert dice(lab == v, truth == v) > 0.85 > dice(auto == v, truth == v) + 0.1, v
    # a box seed (its centre) does the same
    box = np.stack([seed - 3.0, seed + 3.0])
    boxed = np.asarray(segment_pallidum(qsm, prior, seeds={"GPi_R": box}).labelmap.data)
    assert dice(boxed == 8, truth == 8) > 0.85


def test_no_contrast_keeps_a_prior_and_says_so(case):
    flat = case["qsm"].with_data(np.random.default_rng(1).normal(0.0, 0.01, case["qsm"].shape3).astype(np.float32))
    seg = segment_pallidum(flat, case["prior"])
    for n in PALLIDUM_NAMES.values():
        assert seg.source[n] in ("prior", "localized prior"), seg.source
        assert any(m.startswith(n + ":") and "kept the" in m for m in seg.messages)


def test_segment_nuclei_adds_the_pallidum_and_leaves_the_midbrain_alone(tmp_path):
    """One call segments both groups into one label map and .seg.nrrd; the STN/SN/RN result is the same
    with or without the pallidum in the prior."""
    case = make_atlas_case(seed=4, box_ras=((-36.0, -32.0, -22.0), (36.0, 16.0, 16.0)), warp_mm=0.0,
                           max_rot_deg=2.0, max_shift_mm=1.5)
    prior = np.asarray(case["prior"].data)
    seg = segment_nuclei(case["qsm"], case["prior"])
    no_pallidum = case["prior"].with_data(np.where(np.isin(prior, (5, 6, 105, 106)), 0, prior))
    alone = segment_nuclei(case["qsm"], no_pallidum)
    lab, lab_alone = np.asarray(seg.labelmap.data), np.asarray(alone.labelmap.data)
    for v in MIDBRAIN_NAMES:
        assert np.array_equal(lab == v, lab_alone == v), MIDBRAIN_NAMES[v]
    assert not np.isin(lab_alone, list(PALLIDUM_NAMES)).any()
    truth = prior_to_structures(case["truth"].data)
    ours = _scores(lab, truth, case["qsm"].ras_from_ijk)
    assert all(d > 0.85 for d, _ in ours.values()), ours
    assert seg.timings["pallidum_s"] > 0
    out = write_seg_nrrd(tmp_path / "all.seg.nrrd", seg)
    back, names = read_seg_nrrd(out)
    assert [names[v] for v in sorted(names)][-4:] == ["GPi_L", "GPi_R", "GPe_L", "GPe_R"]
    assert np.array_equal(np.asarray(back.data), lab)
    rows = {r["structure"]: r for r in seg.stats()}
    assert rows["GPi_L"]["volume_mm3"] > 300 and rows["GPi_L"]["mean_chi_ppm"] > 0.1
    assert rows["GPi_L"]["centroid_r"] < 0 < rows["GPi_R"]["centroid_r"]
