"""The workflow: end-to-end planning on the small digital patient (registrations and atlas given from the
ground truth to keep the test short: QSM, segmentation, vein mask, entry search, electrodes, outputs are
computed); the ``run``/``demo`` command surface; ``qsmplanner run`` and the Slicer panel's logic giving the
same plan on the same patient; the settings; the worker-process runner; the layering of the package."""
import csv
import dataclasses
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from QSMPlannerLib.cli import main

phantom = pytest.importorskip("QSMPlannerLib.phantom")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    from QSMPlannerLib.workflow import export_plan, plan_patient
    p = phantom.make_patient(seed=1, small=True, veins_on_standard_trajectory=True)
    out = tmp_path_factory.mktemp("plan")
    tr = p.transforms
    res = plan_patient(p.gre, p.t1, p.ct, p.landmarks, t1_from_gre=tr["t1_from_gre"], t1_from_ct=tr["t1_from_ct"],
                       prior_labels=p.truth["labels_gre"], xyz_from_ct=np.asarray(tr["xyz_from_ct"], float))
    export_plan(res, out)
    return p, res, out


@pytest.mark.slow
def test_outputs_written(result):
    p, res, out = result
    scene = ("scene.mrb",) if importlib.util.find_spec("slicer") else ()  # the scene needs slicer-core
    for name in ("plan.json", "plan.csv", "report.html", "qsm_chi_ppm.nii.gz", "vessels.nii.gz") + scene:
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
        assert sp["electrode"]["contacts_in_target"] >= 1
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
    pytest.importorskip("slicer")
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


def test_settings_are_checked_at_the_door(tmp_path, capsys):
    from QSMPlannerLib.errors import InputError
    from QSMPlannerLib.workflow import PlanSettings
    assert PlanSettings().target_kinds == {"left": "stn", "right": "stn"}
    for bad in ({"mounting": "sideways"}, {"electrode": "x"}, {"margin_mm": -1.0}, {"bfr": "sharp"},
                {"target_kinds": {"left": "thalamus"}}, {"mer_spacing_mm": 0.0}):
        with pytest.raises(InputError):
            PlanSettings(**bad)
    assert PlanSettings.from_dict(PlanSettings(margin_mm=2.0).to_dict()) == PlanSettings(margin_mm=2.0)
    assert main(["run", "--mag", "x", "--phase", "y", "--te", "0.005", "--margin", "50", "--out",
                 str(tmp_path / "o")]) == 2
    assert "margin_mm" in capsys.readouterr().err and not (tmp_path / "o").exists()


# ---- the two faces give the same plan ------------------------------------------------------------
def _assert_same(a, b, where, atol=1e-6):
    """Equal JSON values: numbers within ``atol``, everything else exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}", atol)
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), f"{where}: lengths {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]", atol)
    elif isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
        assert abs(a - b) <= atol or (a != a and b != b), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _write_inputs(p, root):
    """The small patient as a user would hand it over: BIDS GRE/T1/CT, AC/PC/MS markups, ITK transform
    files for GRE->T1, CT->T1 and T1->MNI (the patient's true ones)."""
    import SimpleITK as sitk
    from QSMPlannerLib.io.markups import write_points
    from QSMPlannerLib.registration import write_transform
    from QSMPlannerLib.registration.transform_io import sitk_affine_from_ras
    paths = phantom.write_patient(p, root / "bids", "syn")
    files = {"bids": root / "bids", "landmarks": write_points(root / "acpc.mrk.json", dict(p.landmarks), "RAS"),
             "gre_to_t1": root / "T1_from_GRE.h5", "ct_to_t1": root / "T1_from_CT.h5", "t1_to_mni": root / "mni.tfm",
             "t1": paths["t1"], "ct": paths["ct"]}
    write_transform(files["gre_to_t1"], p.transforms["t1_from_gre"])
    write_transform(files["ct_to_t1"], p.transforms["t1_from_ct"])
    sitk.WriteTransform(sitk_affine_from_ras(np.asarray(p.transforms["t1_from_mni"], float)), str(files["t1_to_mni"]))
    return files


@pytest.mark.main_leg
@pytest.mark.slow
def test_command_line_and_panel_give_the_same_plan(tmp_path, capsys):
    """``qsmplanner run`` on files, and the Slicer panel's logic on MRML nodes read from the same files (its
    long stages in worker processes, as in Slicer): the same plan document, number for number."""
    pytest.importorskip("slicer")
    import json
    from QSMPlannerLib.io import read_points, read_volume
    from QSMPlannerLib.panel.logic import PlannerLogic
    from QSMPlannerLib.registration.transform_io import read_sitk_transform, read_transform
    from QSMPlannerLib.scene import mrml
    p = phantom.make_patient(seed=2, small=True, veins_on_standard_trajectory=True)
    f = _write_inputs(p, tmp_path)
    assert main(["run", "--bids", str(f["bids"]), "--landmarks", str(f["landmarks"]), "--gre-to-t1",
                 str(f["gre_to_t1"]), "--ct-to-t1", str(f["ct_to_t1"]), "--t1-to-mni", str(f["t1_to_mni"]),
                 "--no-scene", "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "plan.json").read_text())

    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    echoes = logic.run_in_process(logic.gre_files_task(f["bids"]))
    mag, pha = echoes["magnitude"][0], echoes["phase"][0]
    t1 = mrml.add_volume(scene, read_volume(f["t1"]), "T1")
    ct = mrml.add_volume(scene, read_volume(f["ct"]), "CT")
    logic.set_landmarks(read_points(f["landmarks"]))
    qsm = logic.run_in_process(logic.qsm_task(mag, pha))
    logic.set_transform(mag, read_transform(f["gre_to_t1"]), "T1_from_GRE",
                        [n for n in logic.gre_nodes_for(mag) if n is not mag] + [qsm])
    logic.set_transform(ct, read_transform(f["ct_to_t1"]), "T1_from_CT")
    logic.set_normalization(read_sitk_transform(f["t1_to_mni"]), t1)
    seg = logic.run_in_process(logic.segmentation_task(qsm, t1))
    logic.run_in_process(logic.frame_task(ct))
    logic.run_in_process(logic.risk_task(qsm, seg, t1))
    for side in ("left", "right"):
        logic.plan_side(side, qsm, seg, t1, ct)
    panel = logic.document(ct, qsm)

    assert set(panel["sides"]) == set(cli["sides"]) == {"left", "right"}
    assert panel["settings"] == cli["settings"]
    assert panel["registration_qc"] == cli["registration_qc"] == {"gre_to_t1": {"given": True}, "ct_to_t1": {"given": True}}
    for side in ("left", "right"):
        a, b = panel["sides"][side], cli["sides"][side]
        for key in ("target", "entry"):
            for system in ("RAS_mm", "ACPC_mm", "LeksellXYZ_mm"):
                np.testing.assert_allclose(a[key][system], b[key][system], atol=1e-6, err_msg=f"{side} {key} {system}")
        for key in ("ring_deg", "arc_deg"):
            assert a["frame"][key] == pytest.approx(b["frame"][key], abs=1e-6)
        assert a["statement"] == b["statement"] and a["target_adjustment"] == b["target_adjustment"]
        _assert_same(json.loads(json.dumps(a["safety"])), b["safety"], f"{side} safety")
        _assert_same(json.loads(json.dumps(a["candidates"])), b["candidates"], f"{side} candidates")
        _assert_same(json.loads(json.dumps(a["electrode"])), b["electrode"], f"{side} electrode")
    np.testing.assert_allclose(panel["transforms"]["xyz_from_t1"], cli["transforms"]["xyz_from_t1"], atol=1e-9)


# ---- the worker-process runner -------------------------------------------------------------------
def test_chunked_pickles_round_trip_large_arrays_a_slice_at_a_time(tmp_path):
    from QSMPlannerLib.volume import Volume
    from QSMPlannerLib.workflow import jobs
    rng = np.random.default_rng(0)
    obj = {"vol": Volume(rng.standard_normal((64, 64, 40)).astype(np.float32), np.eye(4), "v"),
           "ints": np.arange(10), "text": "χ ppm", "strided": np.ones((8, 8))[:, ::2]}
    w = jobs.ChunkedWriter(obj, tmp_path / "x.pkl5")
    steps = 1
    while not w.step(max_bytes=100_000):
        steps += 1
    assert steps >= 6                                   # 655 kB of voxels, at most 100 kB a step
    r = jobs.ChunkedReader(tmp_path / "x.pkl5")
    while not r.step(max_bytes=100_000):
        pass
    back = r.result
    np.testing.assert_array_equal(back["vol"].data, obj["vol"].data)
    np.testing.assert_array_equal(back["strided"], obj["strided"])
    assert back["text"] == "χ ppm" and back["vol"].data.flags.writeable


@dataclasses.dataclass(frozen=True)
class _Holder:
    vol: object
    echoes: np.ndarray


def test_worker_results_come_in_vtk_memory_order_with_the_same_values(tmp_path):
    """A worker hands its volumes over i-fastest (VTK's order) so the GUI adds them without a transpose;
    values, nesting and small arrays are untouched."""
    from QSMPlannerLib.volume import Volume
    from QSMPlannerLib.workflow import jobs
    rng = np.random.default_rng(1)
    vol = Volume(rng.standard_normal((20, 16, 12)).astype(np.float32), np.eye(4), "v")
    echoes = rng.standard_normal((20, 16, 12, 3))
    expect = (vol.data.copy(), echoes.copy())
    obj = {"h": _Holder(vol, echoes), "pair": (vol, np.arange(6).reshape(2, 3)), "same": vol}
    jobs.dump(jobs.in_vtk_order(obj), tmp_path / "r.pkl5")
    back = jobs.load(tmp_path / "r.pkl5")
    for data in (back["h"].vol.data, back["h"].echoes, back["h"].echoes[..., 1], back["pair"][0].data):
        assert data.flags.f_contiguous and not data.flags.c_contiguous
    np.testing.assert_array_equal(back["h"].vol.data, expect[0])
    np.testing.assert_array_equal(back["h"].echoes, expect[1])
    assert back["pair"][1].flags.c_contiguous and back["same"] is back["h"].vol
    # the scene reads the same voxels back from a node made of the Fortran-ordered volume
    pytest.importorskip("slicer")
    from QSMPlannerLib.scene import mrml
    node = mrml.add_volume(mrml.new_scene(), back["h"].vol, "v")
    np.testing.assert_array_equal(mrml.volume_from_node(node).data, expect[0])


def test_a_job_reports_a_worker_that_dies_and_refuses_unknown_stages(tmp_path):
    from QSMPlannerLib.errors import InputError, ProcessingError
    from QSMPlannerLib.workflow import jobs
    with pytest.raises(InputError, match="unknown stage"):
        jobs.Job("no_such_stage", {})
    # a "python" that exits at once without a result: the job ends with an error naming the stage
    job = jobs.Job("segment", {}, python=[sys.executable, "-c", "import sys; sys.exit(3)", "--"])
    job.wait()
    assert isinstance(job.error, ProcessingError) and "segment" in str(job.error) and "exit 3" in str(job.error)
    assert not job.dir.exists()


# ---- the house: layers, no circles ---------------------------------------------------------------
LAYERS = {  # a package may import its own layer's base modules and every layer below it, never above
    "base": {"errors", "progress", "volume", "QSMPlannerLib"},
    "io": {"io"}, "phantom": {"phantom"},
    "stages": {"qsm", "registration", "segmentation", "stereotaxy", "planning"},
    "export": {"report", "scene"},
    "workflow": {"workflow"},
    "faces": {"cli", "panel"},
}
ORDER = ["base", "io", "stages", "export", "workflow", "faces"]


def _package_imports():
    import ast
    import collections
    root = Path(__file__).resolve().parents[2] / "QSMPlannerLib"
    edges = collections.defaultdict(set)
    module_edges = collections.defaultdict(set)
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        mod = parts[:-1] if is_pkg else parts
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(mod if is_pkg else mod[:-1])
                base = base[:len(base) - (node.level - 1)]
                target = tuple(base + (node.module.split(".") if node.module else []))
                src, dst = (mod[1] if len(mod) > 1 else "QSMPlannerLib"), \
                    (target[1] if len(target) > 1 else "QSMPlannerLib")
                if src != dst:
                    edges[src].add(dst)
                module_edges[".".join(mod)].add(".".join(target))
    return edges, module_edges


def _layer(pkg):
    return next(name for name, members in LAYERS.items() if pkg in members)


def test_packages_only_import_downwards_and_never_in_a_circle():
    edges, modules = _package_imports()
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = [(a, b) for a, bs in edges.items() for b in bs
              if "phantom" not in (a, b) and b not in LAYERS["base"] and rank[_layer(b)] > rank[_layer(a)]]
    assert not upward, f"imports that reach up a layer: {upward}"
    # the digital patient is test data: only faces and the workflow's demo use it, no stage does
    assert not [a for a, bs in edges.items() if "phantom" in bs and _layer(a) not in ("faces",)]
    # stages do not import each other in a circle, and no module imports itself through a cycle
    for a, bs in edges.items():
        for b in bs:
            assert a not in edges.get(b, set()), f"{a} <-> {b}"
    assert "slicer" not in {m.split(".")[0] for ms in modules.values() for m in ms}


@pytest.mark.main_leg
@pytest.mark.slow
def test_a_crw_frame_gives_crw_coordinates_in_every_output(tmp_path):
    """The frame recognised on the CT is the frame of every output: the CRW's LAT, AP, VERT (not Leksell
    X, Y, Z) in plan.json, plan.csv and the report, which says its arc settings are not provided."""
    from QSMPlannerLib.workflow import export_plan, plan_patient
    p = phantom.make_patient(seed=3, small=True, frame="crw")
    tr = p.transforms
    res = plan_patient(p.gre, p.t1, p.ct, p.landmarks, t1_from_gre=tr["t1_from_gre"], t1_from_ct=tr["t1_from_ct"],
                       prior_labels=p.truth["labels_gre"])
    assert res.frame is not None and res.frame.system == "crw" and res.frame_system == "crw"
    export_plan(res, tmp_path, scene=False)
    doc = json.loads((tmp_path / "plan.json").read_text())
    assert doc["frame_system"] == "CRW"
    truth = np.asarray(tr["frame_from_ct"], float) @ np.linalg.inv(np.asarray(tr["t1_from_ct"], float))
    for side, sp in doc["sides"].items():
        assert sp["frame"]["system_key"] == "crw" and not sp["frame"]["arc_settings"]["provided"]
        assert "LeksellXYZ_mm" not in sp["target"] and "ring_deg" not in sp["frame"]
        crw = sp["target"]["CRW_mm"]
        expected = truth[:3, :3] @ np.array(sp["target"]["RAS_mm"]) + truth[:3, 3]      # LAT, AP, VERT = frame R, A, S
        np.testing.assert_allclose([crw["LAT"], crw["AP"], crw["VERT"]], expected, atol=0.3)
        assert sp["frame"]["phantom_base"]["AP"] == pytest.approx(crw["AP"])
        # the frame registration's predicted TRE at this target, from the registration itself
        assert sp["frame"]["predicted_tre_mm"] == pytest.approx(
            res.frame.predicted_tre_mm(target_xyz=[crw["LAT"], crw["AP"], crw["VERT"]]), rel=1e-6)
        assert 0.0 < sp["frame"]["predicted_tre_mm"] < 0.5
    rows = list(csv.DictReader(open(tmp_path / "plan.csv")))
    assert {"LAT_CRW_mm", "AP_CRW_mm", "VERT_CRW_mm"} <= set(rows[0]) and "X_Leksell_mm" not in rows[0]
    assert float(rows[0]["AP_CRW_mm"]) == pytest.approx(doc["sides"]["left"]["target"]["CRW_mm"]["AP"], abs=1e-3)
    report = (tmp_path / "report.html").read_text()
    assert "LAT (CRW mm)" in report and "CRW arc settings not provided" in report and "Phantom base" in report
    assert "Frame registration (CRW, automatic): FRE" in report and "predicted TRE left target" in report


@pytest.mark.main_leg
@pytest.mark.slow
def test_gpi_and_vim_sides_through_every_output(tmp_path, capsys):
    """A GPi on the left, a VIM on the right: the left target lies in the patient's true GPi, the VIM is the
    cited formula on the third ventricle measured on the T1; the plan, the electrode and the report name
    the kind and give the direct and indirect estimates with their difference; an unknown kind exits 2."""
    from QSMPlannerLib.planning import measure_third_ventricle, suggest_vim
    from QSMPlannerLib.workflow import PlanSettings, export_plan, plan_patient
    p = phantom.make_patient(seed=1, small=True)
    tr = p.transforms
    settings = PlanSettings(target_kinds={"left": "gpi", "right": "vim"})
    res = plan_patient(p.gre, p.t1, p.ct, p.landmarks, settings, t1_from_gre=tr["t1_from_gre"],
                       t1_from_ct=tr["t1_from_ct"], prior_labels=p.truth["labels_gre"],
                       xyz_from_ct=np.asarray(tr["xyz_from_ct"], float))
    export_plan(res, tmp_path, scene=False)
    doc = json.loads((tmp_path / "plan.json").read_text())
    left, right = doc["sides"]["left"], doc["sides"]["right"]
    assert left["target_kind"] == "gpi" and right["target_kind"] == "vim"
    labels = p.truth["labels_t1"]
    gpi = labels.ijk_to_ras(np.argwhere(np.asarray(labels.data) == 6))        # CIT168 GPi, left
    assert np.min(np.linalg.norm(gpi - np.array(left["target"]["RAS_mm"]), axis=1)) < 1.5
    sug = left["target_suggestion"]
    assert sug["target"]["method"] == "direct" and sug["cross_check"]["method"] == "indirect"
    np.testing.assert_allclose(np.subtract(sug["cross_check"]["ACPC_mm"], sug["target"]["ACPC_mm"]),
                               sug["difference"]["vector_mm"], atol=2e-3)
    assert left["electrode"]["target_structure"] == "GPi_L"
    walls = measure_third_ventricle(p.t1, p.landmarks)
    vim = suggest_vim("right", p.landmarks, walls)
    np.testing.assert_allclose(right["target"]["RAS_mm"], vim.target_ras, atol=1e-6)
    assert right["target_suggestion"]["target"]["method"] == "indirect" and right["target_adjustment"] is None
    report = (tmp_path / "report.html").read_text()
    assert "Target: GPi" in report and "Target: VIM" in report and "cross-check - target" in report
    with pytest.raises(SystemExit) as e:
        main(["run", "--mag", "x", "--phase", "y", "--te", "0.005", "--target-kind", "thalamus", "--out",
              str(tmp_path / "o")])
    assert e.value.code == 2 and "stn" in capsys.readouterr().err
