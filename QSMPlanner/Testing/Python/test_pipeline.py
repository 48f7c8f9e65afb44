"""End-to-end planning on the small digital patient (registrations and atlas given from the ground truth to
keep the test short: QSM, segmentation, vein mask, entry search, electrodes, outputs are computed), and the
``run``/``demo`` command surface."""
import csv
import json
import re

import numpy as np
import pytest

from QSMPlannerLib.cli import main

phantom = pytest.importorskip("QSMPlannerLib.phantom")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from QSMPlannerLib.pipeline import run_patient
    p = phantom.make_patient(seed=1, small=True, veins_on_standard_trajectory=True)
    out = tmp_path_factory.mktemp("plan")
    tr = p.transforms
    xyz_from_ct = np.asarray(tr["xyz_from_ct"], float)
    res = run_patient(p.gre, p.t1, p.ct, p.landmarks, out, t1_from_gre=tr["t1_from_gre"],
                      t1_from_ct=tr["t1_from_ct"], prior_labels=p.truth["labels_gre"], xyz_from_ct=xyz_from_ct)
    return p, res, out


@pytest.mark.slow
def test_outputs_written(result):
    p, res, out = result
    for name in ("plan.json", "plan.csv", "report.html", "scene.mrb", "qsm_chi_ppm.nii.gz", "vessels.nii.gz"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*part*"))  # nothing half written left behind


@pytest.mark.slow
def test_plan_coordinates_and_targets(result):
    p, res, out = result
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["sides"]) == {"left", "right"}
    tr = p.transforms
    xyz_from_t1 = np.asarray(tr["xyz_from_ct"], float) @ np.linalg.inv(np.asarray(tr["t1_from_ct"], float))
    labels = p.truth["labels_t1"]
    for side, s, value in (("left", "L", 16), ("right", "R", 116)):
        sp = plan["sides"][side]
        t = np.array(sp["target"]["RAS_mm"])
        # the suggested target (dorsolateral, moved off the veins) lies in the patient's true STN: within
        # 1.5 mm of a voxel centre of its label on this 2 mm grid
        ijk = np.argwhere(labels.data == value)
        stn_ras = ijk @ labels.ras_from_ijk[:3, :3].T + labels.ras_from_ijk[:3, 3]
        assert np.min(np.linalg.norm(stn_ras - t, axis=1)) < 1.5
        assert np.linalg.norm(t - np.asarray(p.stn_centroids[f"STN_{s}"])) < 6.0
        assert np.sign(t[0] - np.asarray(p.landmarks["AC"])[0]) == (-1 if s == "L" else 1)
        # Leksell coordinates are the true frame pose applied to the T1 RAS point
        np.testing.assert_allclose(sp["target"]["LeksellXYZ_mm"], xyz_from_t1[:3, :3] @ t + xyz_from_t1[:3, 3],
                                   atol=1e-6)
        assert "ACPC_mm" in sp["target"] and sp["frame"]["mounting"] == "lateral-right"
        assert 0 < sp["frame"]["ring_deg"] < 180 and 0 < sp["frame"]["arc_deg"] < 180
        assert sp["electrode"]["contacts_in_stn"] >= 1
        assert sp["safety"]["safe"] == (sp["safety"]["vessel_clearance_mm"] >= 3.0
                                        and not sp["safety"]["crosses_ventricle"])
    rows = list(csv.DictReader(open(out / "plan.csv")))
    assert len(rows) == 4 and {"R_RAS_mm", "x_ACPC_mm", "X_Leksell_mm", "ring_deg", "mounting"} <= set(rows[0])
    assert float(rows[0]["X_Leksell_mm"]) == pytest.approx(plan["sides"]["left"]["target"]["LeksellXYZ_mm"][0],
                                                           abs=1e-3)


@pytest.mark.slow
def test_report_and_scene(result):
    p, res, out = result
    text = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", text)) >= 11
    assert "X (Leksell mm)" in text and "lateral (AC-PC mm)" in text
    from QSMPlannerLib.scene import load_mrb
    from QSMPlannerLib.scene import mrml
    scene = load_mrb(out / "scene.mrb")
    names = {n.GetName() for n in mrml.nodes_by_class(scene, "vtkMRMLNode")}
    assert {"T1", "QSM", "CT", "Nuclei", "Trajectory_L", "Trajectory_R", "Electrode_L", "T1_from_GRE"} <= names


def test_run_and_demo_commands(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--help"])
    assert e.value.code == 0
    assert "--ct" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    # no GRE -> exit 2 with a message, nothing written
    assert main(["run", "--out", str(tmp_path / "o")]) == 2
    assert "no GRE input" in capsys.readouterr().err
    assert not (tmp_path / "o" / "plan.json").exists()
