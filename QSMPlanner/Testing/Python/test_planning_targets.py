"""Targets per kind: the VIM formula's worked examples, the third ventricle measured on a T1, the GPi target
(posteroventral, deep, equivariant) with its indirect cross-check, STN as before, the CLI's --target-kind."""
import json

import numpy as np
import pytest

from QSMPlannerLib.cli import main
from QSMPlannerLib.errors import InputError, ProcessingError
from QSMPlannerLib.io.markups import write_points
from QSMPlannerLib.planning import (TARGET_KINDS, ThirdVentricle, check_target_kind, measure_third_ventricle,
                                    suggest_target, suggest_target_of_kind, suggest_vim, vim_acpc)
from QSMPlannerLib.planning.gpi import GPI_TARGET_DEPTH_MM, posteroventral
from QSMPlannerLib.planning.kinds import indirect_check
from QSMPlannerLib.stereotaxy import acpc_coordinates
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix

# AC-PC frame = RAS, MCP at the origin, AC-PC length 24 mm
CANON = {"AC": np.array([0.0, 12.0, 0.0]), "PC": np.array([0.0, -12.0, 0.0]), "MS": np.array([0.0, 0.0, 40.0])}


def _rigid(angles_deg, shift):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles_deg)
    m[:3, 3] = shift
    return m


def _move(m, p):
    return np.asarray(p, float) @ m[:3, :3].T + m[:3, 3]


def test_target_kinds_are_one_list_and_unknown_kinds_name_them():
    assert TARGET_KINDS == ("stn", "gpi", "vim")
    assert check_target_kind(" GPi ") == "gpi"
    with pytest.raises(InputError) as err:
        check_target_kind("vop")
    assert all(k in str(err.value) for k in TARGET_KINDS)


def test_vim_formula_worked_example():
    # L = 24 mm; walls at -3 and +3 mm: a quarter of 24 mm anterior to the PC (y = -12 + 6 = -6),
    # 3 + 11 = 14 mm lateral, on the AC-PC plane
    np.testing.assert_allclose(vim_acpc("right", 24.0, 3.0), [14.0, -6.0, 0.0], atol=0.1)
    np.testing.assert_allclose(vim_acpc("left", 24.0, -3.0), [-14.0, -6.0, 0.0], atol=0.1)
    for side, expected in (("right", [14.0, -6.0, 0.0]), ("left", [-14.0, -6.0, 0.0])):
        s = suggest_vim(side, CANON, 6.0)
        np.testing.assert_allclose(s.target.ras, expected, atol=0.1)
        np.testing.assert_allclose(s.target.acpc, expected, atol=0.1)
        assert s.target.method == "indirect" and s.kind == "vim"
        assert "11 mm lateral" in s.statement and "25%" in s.statement
    # a second example by hand: L = 26 mm (AC y = +13, PC y = -13), walls -2.5 / +4.5 (asymmetric)
    lm = {"AC": [0.0, 13.0, 0.0], "PC": [0.0, -13.0, 0.0], "MS": [0.0, 0.0, 30.0]}
    tv = ThirdVentricle(-2.5, 4.5)
    np.testing.assert_allclose(suggest_vim("right", lm, tv).target.acpc, [15.5, -6.5, 0.0], atol=0.1)
    np.testing.assert_allclose(suggest_vim("left", lm, tv).target.acpc, [-13.5, -6.5, 0.0], atol=0.1)


def test_vim_moves_with_the_head_and_reports_the_midline_variant():
    m = _rigid([8.0, -5.0, 12.0], [3.0, -20.0, 11.0])
    moved = {k: _move(m, v) for k, v in CANON.items()}
    s = suggest_vim("right", moved, 8.0)                     # walls at +-4: 15 mm lateral
    np.testing.assert_allclose(s.target.ras, _move(m, [15.0, -6.0, 0.0]), atol=1e-6)
    np.testing.assert_allclose(s.target.acpc, [15.0, -6.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(s.cross_check.acpc, [14.0, -6.0, 0.0], atol=1e-6)
    assert s.difference["system"] == "ACPC"
    np.testing.assert_allclose(s.difference["vector_mm"], [-1.0, 0.0, 0.0], atol=1e-3)
    # without a measured ventricle the fixed variant is the target, with no cross-check
    fixed = suggest_vim("left", moved, None)
    np.testing.assert_allclose(fixed.target.acpc, [-14.0, -6.0, 0.0], atol=1e-6)
    assert fixed.cross_check is None and "not measured" in fixed.statement
    with pytest.raises(InputError):
        suggest_vim("left", {"AC": [0, 1, 0]}, 6.0)
    with pytest.raises(InputError):
        suggest_vim("left", moved, -2.0)


def _t1_with_ventricle(landmarks, left_x, right_x, rng, direction_deg=(6.0, -4.0, 9.0), voxel=(1.0, 1.0, 1.2)):
    """A T1 (thalamus 700, CSF 100, noise 12) on an oblique grid: a CSF slab between AC-PC x = left_x and
    right_x, 20 mm high and 30 mm long around the MCP; partial volume from 3x3x3 sub-samples."""
    from QSMPlannerLib.stereotaxy import acpc_from_ras
    frame = acpc_from_ras(landmarks["AC"], landmarks["PC"], landmarks["MS"])
    shape = (48, 48, 36)
    m = ras_from_ijk_matrix(voxel, rotation_matrix(direction_deg))
    mcp = (np.asarray(landmarks["AC"]) + landmarks["PC"]) / 2.0
    m[:3, 3] = mcp - m[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    inside = np.zeros(len(idx))
    offs = (np.arange(3) - 1) / 3.0
    for a in offs:
        for b in offs:
            for c in offs:
                acpc = _move(frame @ m, idx + [a, b, c])
                inside += ((acpc[:, 0] > left_x) & (acpc[:, 0] < right_x) & (np.abs(acpc[:, 1]) < 15.0)
                           & (np.abs(acpc[:, 2]) < 10.0))
    frac = (inside / 27.0).reshape(shape)
    t1 = 700.0 * (1 - frac) + 100.0 * frac + rng.normal(0.0, 12.0, shape)
    return Volume(t1.astype(np.float32), m, "T1")


def test_third_ventricle_walls_measured_on_an_oblique_t1(rng):
    m = _rigid([4.0, 3.0, -7.0], [-2.0, 10.0, 5.0])
    lm = {k: _move(m, v) for k, v in CANON.items()}
    t1 = _t1_with_ventricle(lm, -2.7, 3.9, rng)
    tv = measure_third_ventricle(t1, lm)
    assert tv.ap_mm == pytest.approx(-6.0)
    assert abs(tv.left_wall_x_mm - (-2.7)) < 0.2 and abs(tv.right_wall_x_mm - 3.9) < 0.2, tv
    assert tv.contrast > 0.6
    s = suggest_target_of_kind("vim", "right", landmarks=lm, third_ventricle=tv)
    np.testing.assert_allclose(s.target.acpc, [3.9 + 11.0, -6.0, 0.0], atol=0.2)
    # no ventricle: refused with a reason
    flat = t1.with_data(np.full(t1.shape3, 700.0, np.float32) + rng.normal(0, 12, t1.shape3).astype(np.float32))
    with pytest.raises(ProcessingError):
        measure_third_ventricle(flat, lm)


def _gpi_labelmap(world_from_grid=np.eye(4)):
    """A right GPi (label 8): an ellipsoid 16 x 8 x 10 mm (AP x lateral x vertical) centred at
    (19, 4, -3) RAS, next to a left one (label 7) mirrored, on a 0.8 mm grid placed by world_from_grid."""
    shape = (70, 40, 36)
    m = ras_from_ijk_matrix([0.8] * 3, origin=(-28.0, -12.0, -17.0))
    ras = Volume(np.zeros(shape, np.uint8), m).voxel_ras_grid()
    lab = np.zeros(shape, np.uint8)
    for value, cx in ((8, 19.0), (7, -19.0)):
        r2 = ((ras[..., 0] - cx) / 4.0) ** 2 + ((ras[..., 1] - 4.0) / 8.0) ** 2 + ((ras[..., 2] + 3.0) / 5.0) ** 2
        lab[r2 <= 1.0] = value
    return Volume(lab, world_from_grid @ m, "nuclei")


def test_gpi_target_is_posteroventral_deep_and_moves_with_the_head():
    lab = _gpi_labelmap()
    s = suggest_target_of_kind("gpi", "right", lab, CANON)
    t = s.target.ras
    # inside the ellipsoid, in its posterior and inferior halves, >= the depth from its border
    r = np.sqrt(((t[0] - 19.0) / 4.0) ** 2 + ((t[1] - 4.0) / 8.0) ** 2 + ((t[2] + 3.0) / 5.0) ** 2)
    assert r < 1.0 and t[1] <= 4.0 and t[2] <= -3.0, t
    assert s.details["depth_mm"] >= GPI_TARGET_DEPTH_MM - 1e-6
    # as low as that depth allows: the lateral semi-axis (4 mm) limits the depth; the target sits
    # within ~1 mm of the lowest point that deep (-3 - 5 * sqrt(1 - ((4 - 2) / 4)^2) + 2 = -5.3)
    assert t[2] < -4.0 and s.details["ventral_clearance_mm"] >= 1.5
    # cross-check: the classic indirect GPi (21, +2.5, -5) and the difference indirect - direct
    np.testing.assert_allclose(s.cross_check.acpc, [21.0, 2.5, -5.0], atol=1e-6)
    np.testing.assert_allclose(s.difference["vector_mm"], np.array([21.0, 2.5, -5.0]) - s.target.acpc, atol=1e-3)
    assert s.cross_check.method == "indirect" and s.direct is s.target and s.indirect is s.cross_check
    assert "posteroventral" in s.statement and "indirect" in s.statement
    left = suggest_target_of_kind("gpi", "left", lab, CANON)
    np.testing.assert_allclose(left.target.ras * [-1, 1, 1], t, atol=0.9)      # mirrored anatomy
    # the head moved (segmentation placed by a rigid transform, landmarks moved with it): same target
    m = _rigid([10.0, -6.0, 15.0], [5.0, -3.0, 20.0])
    moved = suggest_target_of_kind("gpi", "right", _gpi_labelmap(), {k: _move(m, v) for k, v in CANON.items()},
                                   world_from_segmentation=m)
    np.testing.assert_allclose(moved.target.ras, _move(m, t), atol=1e-6)
    np.testing.assert_allclose(moved.target.acpc, s.target.acpc, atol=1e-6)
    # without landmarks: RAS axes, no cross-check
    bare = suggest_target_of_kind("gpi", "right", lab)
    assert bare.cross_check is None and bare.target.acpc is None
    with pytest.raises(ProcessingError):
        suggest_target_of_kind("gpi", "right", lab.with_data(np.zeros(lab.shape3, np.uint8)), CANON)


def test_posteroventral_is_the_posterior_and_inferior_quadrant():
    c = np.array([[0, 0, 0], [0, 2, 0], [0, 0, 2], [0, 2, 2], [0, -1, -1]], float)
    assert posteroventral(c).tolist() == [True, False, False, False, True]


def test_stn_kind_is_the_existing_dorsolateral_target():
    lab = np.zeros((40, 40, 30), np.uint8)
    lab[24:32, 18:24, 10:15] = 2                      # STN_R
    vol = Volume(lab, ras_from_ijk_matrix([1.0] * 3, origin=(-10.0, -30.0, -20.0)))
    w = _rigid([3.0, 0.0, -8.0], [1.0, 2.0, 3.0])
    s = suggest_target_of_kind("stn", "right", vol, world_from_segmentation=w)
    np.testing.assert_allclose(s.target.ras, _move(w, suggest_target(vol, "right")), atol=1e-9)
    assert s.cross_check is None and s.difference is None and s.kind == "stn"


def test_indirect_check_beside_a_given_target():
    c = indirect_check("gpi", [20.0, 2.0, -4.0], CANON)
    np.testing.assert_allclose(c["difference_ACPC_mm"], [1.0, 0.5, -1.0], atol=1e-6)
    assert c["side"] == "right" and c["distance_mm"] == pytest.approx(1.5)
    v = indirect_check("vim", [-13.0, -6.0, 1.0], CANON, 6.0)
    np.testing.assert_allclose(v["ACPC_mm"], [-14.0, -6.0, 0.0], atol=1e-6)
    assert indirect_check("stn", [12.0, -2.0, -4.0], CANON) is None
    assert indirect_check("gpi", [20.0, 2.0, -4.0], None) is None


@pytest.mark.parametrize("command", ["plan", "segment"])
def test_cli_refuses_an_unknown_target_kind_listing_the_valid_ones(command, tmp_path, capsys):
    args = (["plan", "--target", "1,2,3", "--entry", "1,2,60"] if command == "plan"
            else ["segment", "--qsm", "q.nii.gz", "--t1", "t1.nii.gz"])
    with pytest.raises(SystemExit) as exc:
        main(args + ["--target-kind", "vop", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "vop" in err and all(k in err for k in TARGET_KINDS)


def test_cli_plan_reports_the_kinds_indirect_target(tmp_path, capsys):
    m = _rigid([5.0, 2.0, -9.0], [4.0, -15.0, 12.0])
    lm = write_points(tmp_path / "acpc.mrk.json", {k: _move(m, v) for k, v in CANON.items()})
    target = _move(m, [20.0, 2.0, -4.0])
    entry = _move(m, [35.0, 30.0, 60.0])
    fmt = lambda p: ",".join(f"{v:.6f}" for v in p)  # noqa: E731
    out = tmp_path / "plan.json"
    assert main(["plan", f"--target={fmt(target)}", f"--entry={fmt(entry)}", "--landmarks", str(lm),
                 "--target-kind", "gpi", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["target_kind"] == "gpi"
    np.testing.assert_allclose(doc["indirect_check"]["difference_ACPC_mm"], [1.0, 0.5, -1.0], atol=1e-3)
    np.testing.assert_allclose(doc["indirect_check"]["RAS_mm"], _move(m, [21.0, 2.5, -5.0]), atol=1e-3)
    assert "GPi indirect target" in capsys.readouterr().out
    assert main(["plan", f"--target={fmt(target)}", f"--entry={fmt(entry)}", "--landmarks", str(lm),
                 "--target-kind", "vim", "--third-ventricle-width", "7", "--out", str(out)]) == 0
    vim = json.loads(out.read_text())["indirect_check"]
    np.testing.assert_allclose(vim["ACPC_mm"], [14.5, -6.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(acpc_coordinates(vim["RAS_mm"], *(np.asarray(_move(m, CANON[k])) for k in
                                                                 ("AC", "PC", "MS"))), [14.5, -6.0, 0.0], atol=1e-3)
    assert main(["plan", f"--target={fmt(target)}", f"--entry={fmt(entry)}", "--landmarks", str(lm),
                 "--target-kind", "vim", "--third-ventricle-width", "-3", "--out", str(out)]) == 2
    assert json.loads(out.read_text())["indirect_check"]["kind"] == "vim"       # the earlier file is intact
    assert main(["plan", f"--target={fmt(target)}", f"--entry={fmt(entry)}", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["target_kind"] == "stn" and doc["indirect_check"] is None
