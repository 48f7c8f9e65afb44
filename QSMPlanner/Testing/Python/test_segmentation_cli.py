"""qsmplanner segment end to end on an atlas-shaped synthetic QSM in its own (GRE) space."""
import csv
import json

import numpy as np
import pytest

from QSMPlannerLib import ATLAS_DIR
from QSMPlannerLib.cli import main
from QSMPlannerLib.io.markups import write_points
from QSMPlannerLib.io.volumes import write_volume
from QSMPlannerLib.registration import write_transform
from QSMPlannerLib.registration.atlas import TEMPLATE
from QSMPlannerLib.segmentation import NAMES, read_seg_nrrd
from QSMPlannerLib.segmentation.metrics import dice
from QSMPlannerLib.segmentation.nuclei import prior_to_structures
from QSMPlannerLib.segmentation.prior import atlas_prior, prior_on_grid
from QSMPlannerLib.segmentation.synthetic import make_atlas_case
from QSMPlannerLib.volume import Volume, rotation_matrix


@pytest.fixture(scope="module")
def gre_from_t1():
    m = np.eye(4)
    m[:3, :3] = rotation_matrix([4.0, -3.0, 6.0])
    m[:3, 3] = [3.0, -5.0, 8.0]
    return m


@pytest.fixture(scope="module")
def case(gre_from_t1):
    return make_atlas_case(seed=2, grid_from_world=gre_from_t1)


@pytest.fixture(scope="module")
def files(tmp_path_factory, case, gre_from_t1):
    d = tmp_path_factory.mktemp("seg")
    write_volume(case["qsm"], d / "qsm.nii.gz")
    write_transform(d / "qsm_to_t1.h5", np.linalg.inv(gre_from_t1))
    write_transform(d / "t1_to_mni.h5", np.eye(4))
    write_points(d / "acpc.mrk.json", {"AC": [0, 2, -4], "PC": [0, -24, -2], "MS": [0, -10, 40]})
    write_points(d / "bad_lm.mrk.json", {"AC": [0, 2, -4], "PC": [0, -24, -2]})
    return d


def test_prior_through_transforms_matches_atlas(case, gre_from_t1):
    """The prior pulled through QSM->T1 (rigid) and T1->MNI (identity) equals the atlas on the grid."""
    import SimpleITK as sitk
    prior = prior_on_grid(case["qsm"], sitk.Transform(3, sitk.sitkIdentity),
                          t1_from_reference=np.linalg.inv(gre_from_t1))
    a, b = prior_to_structures(prior.data), prior_to_structures(case["prior"].data)
    for v in NAMES:
        assert dice(a == v, b == v) > 0.97


def test_atlas_prior_positions_match_a_worked_example_and_the_nearest_labels(case, gre_from_t1):
    """AtlasPrior.atlas_index: where each QSM voxel lands in the atlas, through QSM->T1 (rigid) and a
    T1->MNI affine given as a 4x4 (worked by hand below, independently of SimpleITK's LPS convention),
    and reading the atlas there gives the nearest-label prior."""
    from QSMPlannerLib.registration.transform_io import sitk_affine_from_ras
    t1_from_mni = np.eye(4)
    t1_from_mni[:3, :3] = rotation_matrix([2.0, -5.0, 3.0]) * 1.04
    t1_from_mni[:3, 3] = [1.5, -2.0, 2.5]
    t1_to_mni = sitk_affine_from_ras(t1_from_mni)   # resampling convention: T1 points -> MNI points
    qsm = case["qsm"]
    ap = atlas_prior(qsm, t1_to_mni, t1_from_reference=np.linalg.inv(gre_from_t1))
    lo, shape = np.array([3, 4, 5]), (20, 18, 16)
    idx = ap.atlas_index(lo, shape)
    assert idx.shape == (3,) + shape
    ijk = np.array([[0, 0, 0], [19, 17, 15], [7, 11, 2]])
    ras = qsm.ijk_to_ras(ijk + lo)                                # QSM (GRE) space
    t1 = ras @ np.linalg.inv(gre_from_t1)[:3, :3].T + np.linalg.inv(gre_from_t1)[:3, 3]
    mni_from_t1 = np.linalg.inv(t1_from_mni)
    mni = t1 @ mni_from_t1[:3, :3].T + mni_from_t1[:3, 3]
    expected = ap.atlas.ras_to_ijk(mni)
    got = np.stack([idx[(slice(None),) + tuple(p)] for p in ijk])
    np.testing.assert_allclose(got, expected, atol=1e-3)
    # the atlas read at those positions (nearest) is the nearest-label prior on the whole grid
    full = ap.atlas_index(np.zeros(3, int), qsm.shape3)
    near = np.rint(full).astype(int)
    inside = np.all((near >= 0) & (near < np.array(ap.atlas.shape3)[:, None, None, None]), axis=0)
    lab = np.zeros(qsm.shape3, np.int16)
    lab[inside] = np.asarray(ap.atlas.data)[tuple(n[inside] for n in near)]
    prior = np.asarray(ap.labels.data)
    nuclei = np.isin(prior, [16, 116, 7, 9, 107, 109, 8, 108]) | np.isin(lab, [16, 116, 7, 9, 107, 109, 8, 108])
    assert nuclei.sum() > 1000
    assert (lab[nuclei] == prior[nuclei]).mean() > 0.99
    # the same prior on a coarser grid of the same space: the nearest labels there, same atlas positions
    coarse = Volume(np.zeros((20, 20, 16), np.uint8), qsm.ras_from_ijk @ np.diag([2.0, 2.0, 2.0, 1.0]))
    other = ap.on_grid(coarse)
    np.testing.assert_allclose(other.atlas_index(np.zeros(3, int), (2, 2, 2))[:, 1, 1, 1],
                               full[:, 2, 2, 2], atol=1e-3)
    assert np.array_equal(prior_to_structures(other.labels.data),
                          prior_to_structures(np.asarray(prior)[::2, ::2, ::2][:20, :20, :16]))


def test_segment_with_the_atlas_prior(case, gre_from_t1):
    """The segmentation reading the atlas through the registration does at least as well as the one
    given the nearest-label prior alone, on every nucleus."""
    import SimpleITK as sitk
    from QSMPlannerLib.segmentation import segment_nuclei
    ap = atlas_prior(case["qsm"], sitk.Transform(3, sitk.sitkIdentity),
                     t1_from_reference=np.linalg.inv(gre_from_t1))
    truth = prior_to_structures(case["truth"].data)
    with_atlas = np.asarray(segment_nuclei(case["qsm"], ap).labelmap.data)
    with_labels = np.asarray(segment_nuclei(case["qsm"], ap.labels).labelmap.data)
    for v, n in NAMES.items():
        d_atlas, d_labels = dice(with_atlas == v, truth == v), dice(with_labels == v, truth == v)
        assert d_atlas > 0.8 and d_atlas > d_labels - 0.02, (n, d_atlas, d_labels)


def test_segment_cli(files, case, gre_from_t1, capsys):
    d = files
    out, table = d / "nuclei.seg.nrrd", d / "stats.csv"
    rc = main(["segment", "--qsm", str(d / "qsm.nii.gz"), "--t1", str(ATLAS_DIR / TEMPLATE),
               "--qsm-to-t1", str(d / "qsm_to_t1.h5"), "--t1-to-mni", str(d / "t1_to_mni.h5"),
               "--landmarks", str(d / "acpc.mrk.json"), "--out", str(out), "--table", str(table)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["space"] == "T1 RAS"
    lab, names = read_seg_nrrd(out)
    assert names == NAMES
    # the QSM grid placed in T1 space
    assert np.allclose(lab.ras_from_ijk, np.linalg.inv(gre_from_t1) @ case["qsm"].ras_from_ijk, atol=1e-4)
    truth, prior = prior_to_structures(case["truth"].data), prior_to_structures(case["prior"].data)
    data = np.asarray(lab.data)
    for v, n in NAMES.items():
        assert dice(data == v, truth == v) > dice(prior == v, truth == v), n
        assert dice(data == v, truth == v) > 0.7, n
    rows = list(csv.DictReader(open(table)))
    assert [r["structure"] for r in rows] == list(NAMES.values())
    stn_l = next(r for r in rows if r["structure"] == "STN_L")
    # left STN: lateral left (x < 0), slightly posterior and inferior of the mid-commissural point
    assert -16 < float(stn_l["acpc_x"]) < -7
    assert -8 < float(stn_l["acpc_y"]) < 3
    assert -10 < float(stn_l["acpc_z"]) < 0
    assert not [p for p in d.iterdir() if ".part" in p.name]
    # the default target kind: the dorsolateral STN per side, in T1 RAS and AC-PC
    assert summary["target_kind"] == "stn"
    for side in ("left", "right"):
        t = summary["targets"][side]
        assert t["kind"] == "stn" and t["cross_check"] is None and len(t["target"]["ACPC_mm"]) == 3
        ijk = np.rint(lab.ras_to_ijk(np.asarray(t["target"]["RAS_mm"]))).astype(int)
        assert data[tuple(ijk)] == (1 if side == "left" else 2)


def test_segment_cli_suggests_gpi_and_vim_targets(files, capsys):
    """--target-kind gpi: the posteroventral GPi of the written segmentation with the classic indirect
    coordinates beside it; vim: the formula from the landmarks and the third ventricle measured on the T1
    (here the MNI template, whose ventricle is 2-4 mm wide); vim without landmarks: refused (exit 2)."""
    d = files
    base = ["segment", "--qsm", str(d / "qsm.nii.gz"), "--t1", str(ATLAS_DIR / TEMPLATE),
            "--qsm-to-t1", str(d / "qsm_to_t1.h5"), "--t1-to-mni", str(d / "t1_to_mni.h5"),
            "--out", str(d / "kinds.seg.nrrd")]
    assert main(base + ["--landmarks", str(d / "acpc.mrk.json"), "--target-kind", "gpi"]) == 0
    summary = json.loads(capsys.readouterr().out)
    lab, _ = read_seg_nrrd(d / "kinds.seg.nrrd")
    for side, value, sign in (("left", 7, -1.0), ("right", 8, 1.0)):
        t = summary["targets"][side]
        assert t["kind"] == "gpi" and t["target"]["method"] == "direct"
        ijk = np.rint(lab.ras_to_ijk(np.asarray(t["target"]["RAS_mm"]))).astype(int)
        assert np.asarray(lab.data)[tuple(ijk)] == value
        np.testing.assert_allclose(t["cross_check"]["ACPC_mm"], [sign * 21.0, 2.5, -5.0], atol=1e-3)
        assert t["difference"]["distance_mm"] < 8.0 and "posteroventral" in t["statement"]
    assert main(base + ["--landmarks", str(d / "acpc.mrk.json"), "--target-kind", "vim"]) == 0
    targets = json.loads(capsys.readouterr().out)["targets"]
    length = np.linalg.norm(np.array([0, 2, -4]) - np.array([0, -24, -2]))
    for side, sign in (("left", -1.0), ("right", 1.0)):
        t = targets[side]
        walls = t["details"]["third_ventricle"]
        wall = walls["left_wall_x_ACPC_mm" if side == "left" else "right_wall_x_ACPC_mm"]
        assert 0.5 < sign * wall < 3.0 and walls["source"].startswith("T1")
        np.testing.assert_allclose(t["target"]["ACPC_mm"], [wall + sign * 11.0, -length / 4, 0.0], atol=1e-3)
    assert main(base + ["--target-kind", "vim"]) == 2
    assert "--landmarks" in capsys.readouterr().err


def _roi_file(path, name, centre_ras, size, axes_ras):
    """A Slicer ROI markup stored in LPS (as Slicer writes it)."""
    flip = np.array([-1.0, -1.0, 1.0])
    axes_lps = np.diag(flip) @ np.asarray(axes_ras, float)
    doc = {"@schema": "markups-schema-v1.0.3.json#", "markups": [{
        "type": "ROI", "name": name, "coordinateSystem": "LPS", "roiType": "Box",
        "center": list(flip * np.asarray(centre_ras, float)), "size": list(map(float, size)),
        "orientation": list(axes_lps.ravel()),
        "controlPoints": [{"label": name, "position": list(flip * np.asarray(centre_ras, float))}]}]}
    path.write_text(json.dumps(doc))
    return path


def test_read_seeds_points_and_boxes(tmp_path):
    """Points by label and ROI boxes by name, LPS files in RAS: corners worked by hand."""
    from QSMPlannerLib.errors import InputError
    from QSMPlannerLib.io.markups import read_seeds
    f = _roi_file(tmp_path / "box.mrk.json", "STN_R", [-10.0, -20.0, 30.0], [2.0, 4.0, 6.0], np.eye(3))
    corners = read_seeds(f)["STN_R"]
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(axis=0), [-11.0, -22.0, 27.0])
    np.testing.assert_allclose(corners.max(axis=0), [-9.0, -18.0, 33.0])
    # rotated 90 degrees about S: the box's first axis points anterior
    rot = _roi_file(tmp_path / "rot.mrk.json", "SN_L", [0.0, 0.0, 0.0], [2.0, 4.0, 6.0],
                    [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(np.ptp(read_seeds(rot)["SN_L"], axis=0), [4.0, 2.0, 6.0], atol=1e-9)
    write_points(tmp_path / "pts.mrk.json", {"STN_L": [1.0, 2.0, 3.0]}, coordinate_system="LPS")
    np.testing.assert_allclose(read_seeds(tmp_path / "pts.mrk.json")["STN_L"], [1.0, 2.0, 3.0])
    doc = json.loads(f.read_text())
    doc["markups"] = doc["markups"] * 2
    (tmp_path / "twice.mrk.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="twice"):
        read_seeds(tmp_path / "twice.mrk.json")


def test_segment_cli_with_a_seed_point_and_an_oriented_box(files, case, gre_from_t1, capsys):
    """Semi-automatic mode on the command line: STN_L from a point and STN_R from an oriented ROI box,
    both in T1 space (the QSM grid is oblique to it)."""
    d = files
    truth = prior_to_structures(case["truth"].data)
    qsm = case["qsm"]
    t1_from_gre = np.linalg.inv(gre_from_t1)
    to_t1 = lambda ras: ras @ t1_from_gre[:3, :3].T + t1_from_gre[:3, 3]  # noqa: E731
    write_points(d / "seed_point.mrk.json", {"STN_L": to_t1(qsm.ijk_to_ras(np.argwhere(truth == 1).mean(axis=0)))})
    pts = to_t1(qsm.ijk_to_ras(np.argwhere(truth == 2)))
    axes = rotation_matrix([0.0, 0.0, 20.0])
    local = (pts - pts.mean(axis=0)) @ axes
    centre = pts.mean(axis=0) + axes @ ((local.max(axis=0) + local.min(axis=0)) / 2)
    _roi_file(d / "seed_box.mrk.json", "STN_R", centre, np.ptp(local, axis=0) + 3.0, axes)
    doc = json.loads((d / "seed_point.mrk.json").read_text())
    doc["markups"] += json.loads((d / "seed_box.mrk.json").read_text())["markups"]
    (d / "seeds_both.mrk.json").write_text(json.dumps(doc))
    out, table = d / "seeded.seg.nrrd", d / "seeded.csv"
    rc = main(["segment", "--qsm", str(d / "qsm.nii.gz"), "--t1", str(ATLAS_DIR / TEMPLATE),
               "--qsm-to-t1", str(d / "qsm_to_t1.h5"), "--t1-to-mni", str(d / "t1_to_mni.h5"),
               "--seeds", str(d / "seeds_both.mrk.json"), "--out", str(out), "--table", str(table)])
    assert rc == 0
    capsys.readouterr()
    lab = np.asarray(read_seg_nrrd(out)[0].data)
    rows = {r["structure"]: r for r in csv.DictReader(open(table))}
    for v, n in ((1, "STN_L"), (2, "STN_R")):
        assert rows[n]["source"] == "refined (seeded)"
        assert dice(lab == v, truth == v) > 0.75, n


@pytest.mark.parametrize("change", ["missing_qsm", "bad_out", "missing_transform", "bad_landmarks",
                                    "bad_table", "bad_seed"])
def test_segment_cli_bad_input(files, change, capsys):
    d = files
    args = {"--qsm": str(d / "qsm.nii.gz"), "--t1": str(ATLAS_DIR / TEMPLATE),
            "--qsm-to-t1": str(d / "qsm_to_t1.h5"), "--t1-to-mni": str(d / "t1_to_mni.h5"),
            "--out": str(d / "x.seg.nrrd")}
    if change == "missing_qsm":
        args["--qsm"] = str(d / "nope.nii.gz")
    elif change == "bad_out":
        args["--out"] = str(d / "x.nrrd")
    elif change == "missing_transform":
        args["--qsm-to-t1"] = str(d / "nope.h5")
    elif change == "bad_landmarks":
        args["--landmarks"] = str(d / "bad_lm.mrk.json")
    elif change == "bad_table":
        args["--table"] = str(d / "x.txt")
    elif change == "bad_seed":
        write_points(d / "seeds.mrk.json", {"STN_X": [0, 0, 0]})
        args["--seeds"] = str(d / "seeds.mrk.json")
    argv = ["segment"] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    assert "error" in capsys.readouterr().err
    assert not (d / "x.seg.nrrd").exists()
