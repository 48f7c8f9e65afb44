"""qsmplanner frame / plan: files in, JSON out, the frame and every coordinate system named, bad input exit 2,
no localizer exit 3."""
import json

import numpy as np
import pytest

from QSMPlannerLib.cli import main
from QSMPlannerLib.io.markups import write_points
from QSMPlannerLib.io.volumes import write_volume
from QSMPlannerLib.stereotaxy import Clutter, frame_ct_grid, frame_pose, render_frame_ct, render_localizer_ct, ring_arc
from QSMPlannerLib.stereotaxy.geometry import XYZ_FROM_FRAMERAS, apply
from QSMPlannerLib.volume import ras_from_ijk_matrix, rotation_matrix


@pytest.fixture(scope="module")
def frame_ct(tmp_path_factory):
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix([4.0, -6.0, 3.0])
    pose[:3, 3] = [3.0, -5.0, 6.0]
    truth = XYZ_FROM_FRAMERAS @ np.linalg.inv(pose)
    voxel = np.array([1.0, 1.0, 2.0])
    lo, hi = np.array([-118.0, -95.0, -70.0]), np.array([118.0, 135.0, 80.0])
    shape = tuple(int(s) for s in np.ceil((hi - lo) / voxel) + 1)
    ct = render_localizer_ct(ras_from_ijk_matrix(voxel, origin=lo), shape, truth, rng=0)
    path = tmp_path_factory.mktemp("frame") / "ct.nii.gz"
    write_volume(ct.with_data(ct.data.astype(np.int16)), path)
    return path, truth


def test_frame_then_plan(frame_ct, tmp_path, capsys):
    ct_path, truth = frame_ct
    target_xyz = np.array([112.0, 97.5, 104.0])
    target = apply(np.linalg.inv(truth), target_xyz)
    entry = apply(np.linalg.inv(truth), [135.0, 150.0, 40.0])
    frame_json = tmp_path / "frame.json"
    arg = ",".join(f"{v:.4f}" for v in target)
    fids = tmp_path / "rods.mrk.json"
    assert main(["frame", "--ct", str(ct_path), f"--target={arg}", "--out", str(frame_json),
                 "--fiducials", str(fids)]) == 0
    out = capsys.readouterr().out
    assert "Leksell G frame: FRE" in out and "X 112.0" in out
    fr = json.loads(frame_json.read_text())
    assert fr["system"] == "Leksell G" and fr["system_key"] == "leksell"
    assert fr["target"]["LeksellXYZ_mm"] == pytest.approx(target_xyz, abs=0.1)
    assert fr["fre_mm"] < 0.3 and fr["n_points"] > 50 and set(fr["plates_found"]) == {"anterior", "left", "right"}
    assert "xyz_from_ras_note" in fr and fr["target"]["predicted_tre_mm"] < 0.3
    assert set(fr["coordinate_systems"]) == {"RAS", "LPS", "frame RAS", "Leksell G"}
    assert len(fr["localizer_fiducials"]["rods"]) == 9 and fr["worst_fiducial"]["residual_mm"] < 0.5
    from QSMPlannerLib.io.markups import read_points
    assert sum("start" in k for k in read_points(fids)) == 9

    lm = tmp_path / "acpc.mrk.json"
    write_points(lm, {"AC": [0, 12, 0], "PC": [0, -12, 0], "MS": [0, 0, 40]}, coordinate_system="LPS")
    plan_json = tmp_path / "plan.json"
    argv = ["plan", f"--target={arg}", "--entry=" + ",".join(f"{v:.4f}" for v in entry),
            "--frame", str(frame_json), "--mounting", "lateral-left", "--landmarks", str(lm),
            "--out", str(plan_json)]
    assert main(argv) == 0
    plan = json.loads(plan_json.read_text())
    assert plan["target"]["RAS_mm"] == pytest.approx(target, abs=1e-3)
    assert plan["target"]["LeksellXYZ_mm"] == pytest.approx(target_xyz, abs=0.1)
    assert plan["target"]["ACPC_mm"] == pytest.approx(target, abs=1e-3)    # AC-PC axes = RAS here
    assert plan["frame"]["system"] == "Leksell G" and plan["frame"]["mounting"] == "lateral-left"
    expected = ring_arc(target_xyz, [135.0, 150.0, 40.0], "lateral-left")
    assert plan["frame"]["ring_deg"] == pytest.approx(expected.ring_deg, abs=0.1)
    assert plan["frame"]["arc_deg"] == pytest.approx(expected.arc_deg, abs=0.1)
    assert plan["length_mm"] == pytest.approx(np.linalg.norm(entry - target), abs=1e-3)
    assert len(plan["mer_tracks"]["tracks"]) == 5
    out = capsys.readouterr().out
    assert "Leksell G target X 112.0" in out and "ring" in out


@pytest.mark.parametrize("system", ["crw", "brw"])
def test_frame_then_plan_crw_brw(system, tmp_path, capsys):
    """A cluttered CRW/BRW CT: recognised without --frame, the plan gives LAT, AP, VERT and names the frame;
    the arc settings are marked as not provided."""
    truth = frame_pose([3.0, -4.0, 5.0], [2.0, -3.0, 4.0])
    ras_from_ijk, shape = frame_ct_grid(system, (1.1, 1.1, 2.0))
    ct = render_frame_ct(ras_from_ijk, shape, truth, system, clutter=Clutter(), rng=2, dtype=np.int16)
    path = tmp_path / "ct.nii.gz"
    write_volume(ct, path)
    target_frame, entry_frame = np.array([-12.0, -2.5, -4.0]), np.array([-35.0, 30.0, 60.0])
    target, entry = apply(np.linalg.inv(truth), target_frame), apply(np.linalg.inv(truth), entry_frame)
    frame_json, plan_json = tmp_path / "frame.json", tmp_path / "plan.json"
    assert main(["frame", "--ct", str(path), "--out", str(frame_json)]) == 0
    fr = json.loads(frame_json.read_text())
    assert fr["system_key"] == system and fr["fre_mm"] < 0.3
    assert main(["plan", "--target=" + ",".join(map(str, target)), "--entry=" + ",".join(map(str, entry)),
                 "--frame", str(frame_json), "--out", str(plan_json)]) == 0
    plan = json.loads(plan_json.read_text())
    name = system.upper()
    assert plan["frame"]["system"] == name
    assert plan["target"][f"{name}_mm"] == pytest.approx({"LAT": -12.0, "AP": -2.5, "VERT": -4.0}, abs=0.1)
    assert plan["frame"]["phantom_base"]["LAT"] == pytest.approx(-12.0, abs=0.1)
    assert plan["frame"]["arc_settings"]["provided"] is False and "ring_deg" not in plan["frame"]
    assert name in plan["coordinate_systems"]
    out = capsys.readouterr().out
    assert f"{name} target LAT -12.0" in out and "not provided" in out
    # forcing the wrong frame: exit 3, one line
    assert main(["frame", "--ct", str(path), "--frame", "leksell", "--out", str(tmp_path / "x.json")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Leksell G N-localizer" in err[0]


def test_plan_without_frame(tmp_path):
    out = tmp_path / "p.json"
    assert main(["plan", "--target", "12,-3,-5", "--entry", "35,40,60", "--out", str(out),
                 "--mer-pattern", "grid", "--mer-spacing", "3"]) == 0
    plan = json.loads(out.read_text())
    assert plan["frame"] is None and len(plan["mer_tracks"]["tracks"]) == 9
    assert plan["target"]["LPS_mm"] == [-12.0, 3.0, -5.0]


def test_bad_input_exit_2(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["frame", "--ct", str(tmp_path / "missing.nii.gz"), "--out", str(out)]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"xyz_from_ras": [[1, 0, 0], [0, 1, 0]]}')
    assert main(["plan", "--target", "1,2,3", "--entry", "4,5,6", "--frame", str(bad), "--out", str(out)]) == 2
    lm = tmp_path / "lm.mrk.json"
    write_points(lm, {"AC": [0, 12, 0], "PC": [0, -12, 0]})
    assert main(["plan", "--target", "1,2,3", "--entry", "4,5,6", "--landmarks", str(lm), "--out", str(out)]) == 2
    assert "MS" in capsys.readouterr().err
    assert main(["plan", "--target", "1,2,3", "--entry", "1,2,3", "--out", str(out)]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--target", "1,2,3", "--entry", "4,5,6", "--mounting", "oblique", "--out", str(out)])
    assert exc.value.code == 2
    assert not out.exists()


def test_frame_without_localizer_exit_3(tmp_path, capsys):
    """A head CT with vessels, dental metal, pins, posts, ring and holder but no localizer: exit 3, one line."""
    ras_from_ijk, shape = frame_ct_grid("leksell", (1.2, 1.2, 2.0))
    ct = render_frame_ct(ras_from_ijk, shape, frame_pose([2, 3, -4], [1, 2, 3]), "leksell", clutter=Clutter(),
                         rng=4, dtype=np.int16, plates=())
    path = tmp_path / "head.nii.gz"
    write_volume(ct, path)
    assert main(["frame", "--ct", str(path), "--out", str(tmp_path / "f.json")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no N-localizer: 0 of 3 plates" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "f.json").exists()


def test_frame_manual_clicks_and_plan_transform(frame_ct, tmp_path):
    ct_path, truth = frame_ct
    ras_from_xyz = np.linalg.inv(truth)
    points = {}
    for plate, x_or_y in (("right", 5.0), ("left", 195.0), ("anterior", 215.0)):
        for n, z in enumerate((60.0, 100.0, 140.0), start=1):
            if plate == "anterior":
                a, c = np.array([40.0, x_or_y, z]), np.array([160.0, x_or_y, z])
            else:
                a, c = np.array([x_or_y, 40.0, z]), np.array([x_or_y, 160.0, z])
            b = a + (z - 40.0) / 120.0 * (c - a)
            for rod, p in (("first", a), ("diagonal", b), ("second", c)):
                points[f"{plate} {n} {rod}"] = apply(ras_from_xyz, p)
    clicks = tmp_path / "rods.mrk.json"
    write_points(clicks, points)
    frame_json = tmp_path / "frame.json"
    assert main(["frame", "--ct", str(ct_path), "--clicks", str(clicks), "--out", str(frame_json)]) == 0
    fr = json.loads(frame_json.read_text())
    assert fr["method"] == "manual" and fr["n_points"] == 9 and fr["fre_mm"] < 1e-6
    np.testing.assert_allclose(fr["xyz_from_ras"], truth, atol=1e-6)
    # a label that names no rod: exit 2
    bad = tmp_path / "bad.mrk.json"
    write_points(bad, {"right 1 first": [0, 0, 0], "somewhere": [1, 1, 1]})
    assert main(["frame", "--ct", str(ct_path), "--clicks", str(bad), "--out", str(tmp_path / "x.json")]) == 2

    # plan in another space (T1) through the transform T1_from_CT
    from QSMPlannerLib.registration.transform_io import write_transform
    t1_from_ct = np.eye(4)
    t1_from_ct[:3, :3] = rotation_matrix([3.0, 2.0, -4.0])
    t1_from_ct[:3, 3] = [5.0, -7.0, 2.0]
    tfile = tmp_path / "T1_from_CT.h5"
    write_transform(tfile, t1_from_ct)
    target_xyz = np.array([112.0, 97.5, 104.0])
    target_t1 = apply(t1_from_ct, apply(ras_from_xyz, target_xyz))
    entry_t1 = target_t1 + [20.0, 40.0, 50.0]
    plan_json = tmp_path / "plan.json"
    assert main(["plan", "--target=" + ",".join(map(str, target_t1)), "--entry=" + ",".join(map(str, entry_t1)),
                 "--frame", str(frame_json), "--transform", str(tfile), "--out", str(plan_json)]) == 0
    plan = json.loads(plan_json.read_text())
    assert plan["target"]["LeksellXYZ_mm"] == pytest.approx(target_xyz, abs=1e-4)
    # an older FRAME.json without the system: read as a Leksell G registration
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"xyz_from_ras": fr["xyz_from_ras"]}))
    assert main(["plan", "--target", "1,2,3", "--entry", "20,30,60", "--frame", str(legacy),
                 "--out", str(tmp_path / "p2.json")]) == 0
    assert json.loads((tmp_path / "p2.json").read_text())["frame"]["system"] == "Leksell G"
