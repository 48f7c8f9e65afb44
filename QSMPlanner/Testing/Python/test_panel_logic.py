"""The panel's face on the workflow (QSMPlannerLib.panel.logic.PlannerLogic) on a real MRML scene (slicer-core
wheel), on a small synthetic patient (fast): patient loaded as nodes, geometry (IJK->RAS, oblique), observed vs
hardened transforms, the side plans equal to the workflow's stage called on the same data, the segmentation
node (edits included) as the source of truth, ranked entries away from a vein, frame coordinates, stages in
worker processes (same results as in this process, cancel, errors), the scene saved as .mrb and read back,
and offscreen pictures. The real stages on the digital patient: test_panel_flow.py.
"""
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
pytest.importorskip("slicer")

from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

from QSMPlannerLib.errors import InputError  # noqa: E402
from QSMPlannerLib.io.gre import GAMMA_HZ_PER_T, MultiEchoGRE, b0_dir_from_geometry  # noqa: E402
from QSMPlannerLib.panel.logic import PlannerLogic  # noqa: E402
from QSMPlannerLib.progress import Cancelled  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402
from QSMPlannerLib.scene import present as P  # noqa: E402
from QSMPlannerLib.volume import Volume, apply, rotation_matrix  # noqa: E402
from QSMPlannerLib.workflow import PlanSettings, stages  # noqa: E402

NUCLEI = {1: "STN_L", 2: "STN_R", 3: "SN_L", 4: "SN_R", 5: "RN_L", 6: "RN_R"}
CIT = {16: "STN_L", 116: "STN_R", 7: "SN_L", 107: "SN_R", 8: "RN_L", 108: "RN_R"}


def _affine(rot_deg, shift):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rot_deg)
    m[:3, 3] = shift
    return m


def textbook_entry(target_ras, side, depth_mm=70.0, lateral_deg=20.0, anterior_deg=60.0):
    """A frontal entry ``depth_mm`` from the target, tilted ``lateral_deg`` outward and ``anterior_deg`` above
    the axial plane (RAS axes): where the synthetic vein is put, independent of the planning code."""
    sign = -1.0 if side == "left" else 1.0
    lat, ant = np.deg2rad(lateral_deg), np.deg2rad(anterior_deg)
    d = np.array([sign * np.sin(lat), np.cos(lat) * np.cos(ant), np.cos(lat) * np.sin(ant)])
    return np.asarray(target_ras, float) + depth_mm * d


def synthetic_patient():
    """A small patient with the fields of phantom.DigitalPatient: an oblique GRE (nuclei and a vein in χ),
    a T1 and a CT on other grids, known transforms and landmarks. Nuclei centres are in T1 RAS."""
    rng = np.random.default_rng(3)
    t1_from_gre = _affine([4.0, -3.0, 6.0], [2.0, -4.0, 3.0])
    t1_from_ct = _affine([-2.0, 5.0, -3.0], [-3.0, 6.0, 10.0])
    shape = (72, 72, 48)
    gre_m = np.eye(4)
    gre_m[:3, :3] = rotation_matrix([12.0, 0.0, 0.0]) * 1.25
    gre_m[:3, 3] = -gre_m[:3, :3] @ (np.array(shape) / 2.0)
    grid = Volume(np.zeros(shape), gre_m).voxel_ras_grid()            # GRE RAS
    gre_from_t1 = np.linalg.inv(t1_from_gre)
    centres_t1 = {"STN_L": [-12.0, -2.0, -4.0], "STN_R": [12.0, -2.0, -4.0], "SN_L": [-10.0, -6.0, -9.0],
                  "SN_R": [10.0, -6.0, -9.0], "RN_L": [-5.0, -7.0, -6.0], "RN_R": [5.0, -7.0, -6.0]}
    radii = {"STN": (3.0, 5.0, 2.5), "SN": (4.0, 6.0, 2.0), "RN": (3.0, 3.0, 3.0)}
    chi_value = {"STN": 0.12, "SN": 0.15, "RN": 0.10}
    labels = np.zeros(shape, np.int16)
    chi = 0.01 * rng.standard_normal(shape)
    for value, name in CIT.items():
        c = gre_from_t1[:3, :3] @ centres_t1[name] + gre_from_t1[:3, 3]
        r = radii[name[:-2]]
        inside = (((grid - c) / r) ** 2).sum(axis=-1) < 1.0
        labels[inside] = value
        chi[inside] += chi_value[name[:-2]]
    # A vein (0.45 ppm, radius 1.5 mm) across the textbook left trajectory, 25 mm above the target.
    target_t1 = np.array(centres_t1["STN_L"])
    crossing = target_t1 + 25.0 * (textbook_entry(target_t1, "left") - target_t1) / 70.0
    c = gre_from_t1[:3, :3] @ crossing + gre_from_t1[:3, 3]
    d = np.array([0.0, 1.0, 0.0])
    rel = grid - c
    radial = np.linalg.norm(rel - (rel @ d)[..., None] * d, axis=-1)
    vein = radial < 1.5
    chi[vein] = 0.45
    labels[vein] = 210
    te = np.array([0.004, 0.008, 0.012, 0.016])
    field_hz = chi * 1e-6 * 3.0 * GAMMA_HZ_PER_T
    phase = np.angle(np.exp(1j * 2 * np.pi * field_hz[..., None] * te)).astype(np.float32)
    mag = (1000.0 * np.exp(-te / 0.03) * np.ones(shape + (1,))).astype(np.float32)
    gre = MultiEchoGRE(mag, phase, te, 3.0, gre_m, b0_dir_from_geometry(gre_m), "radians", "synthetic")
    t1_m = np.diag([1.0, 1.0, 1.2, 1.0])
    t1_m[:3, 3] = [-40.0, -40.0, -30.0]
    t1 = Volume(rng.normal(100, 5, (80, 80, 50)).astype(np.float32), t1_m, "T1")
    ct_m = np.diag([0.8, 0.8, 1.5, 1.0])
    ct_m[:3, 3] = [-50.0, -50.0, -40.0]
    ct = Volume(rng.normal(30, 5, (120, 120, 60)).astype(np.float32), ct_m, "CT")
    xyz_from_ct = np.array([[-1.0, 0, 0, 100.0], [0, 1.0, 0, 100.0], [0, 0, -1.0, 100.0], [0, 0, 0, 1.0]]) \
        @ _affine([1.0, 0.0, 2.0], [0.5, -1.0, 4.0])
    return SimpleNamespace(
        gre=gre, t1=t1, ct=ct,
        truth={"labels_gre": Volume(labels, gre_m, "labels_gre"), "chi_ppm": Volume(chi.astype(np.float32), gre_m)},
        landmarks={"AC": np.array([0.0, 2.0, 0.0]), "PC": np.array([0.0, -24.0, 0.0]),
                   "MS": np.array([0.0, -10.0, 40.0])},
        transforms={"t1_from_gre": t1_from_gre, "t1_from_ct": t1_from_ct, "xyz_from_ct": xyz_from_ct},
        stn_centroids={k: np.array(v) for k, v in centres_t1.items() if k.startswith("STN")},
        label_names={**CIT, 210: "vein"}, centres_t1=centres_t1, vein_crossing_t1=crossing)


def _nuclei_labelmap(patient) -> Volume:
    lab = patient.truth["labels_gre"]
    out = np.zeros(lab.shape3, np.int16)
    for v, name in NUCLEI.items():
        cit = next(k for k, n in CIT.items() if n == name)
        out[lab.data == cit] = v
    return Volume(out, lab.ras_from_ijk, "nuclei")


def _in_ellipsoid(patient, name, p_t1) -> bool:
    """True when the T1 point lies in the synthetic nucleus ``name`` (its GRE-space ellipsoid)."""
    radii = {"STN": (3.0, 5.0, 2.5), "SN": (4.0, 6.0, 2.0), "RN": (3.0, 3.0, 3.0)}[name[:-2]]
    gre_from_t1 = np.linalg.inv(patient.transforms["t1_from_gre"])
    c = apply(gre_from_t1, patient.centres_t1[name])
    return float((((apply(gre_from_t1, p_t1) - c) / radii) ** 2).sum()) < 1.0


@pytest.fixture(scope="module")
def patient():
    return synthetic_patient()


@pytest.fixture(scope="module")
def planned(patient):
    """A scene with the patient as nodes (known transforms), QSM, nuclei, landmarks, the risk map and both
    sides planned through the logic."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=True, known_transforms=True)
    t_gre = nodes["T1_from_GRE"]
    qsm = mrml.add_volume(scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=t_gre)
    seg = mrml.add_segmentation(scene, _nuclei_labelmap(patient), NUCLEI, "Nuclei", parent_transform=t_gre)
    logic.run(logic.risk_task(qsm, seg, nodes["T1"]))
    plans = {side: logic.plan_side(side, qsm, seg, nodes["T1"], nodes["CT"]) for side in ("left", "right")}
    return SimpleNamespace(scene=scene, logic=logic, nodes=nodes, qsm=qsm, seg=seg, plans=plans)


def test_patient_nodes_keep_own_geometry_under_observed_transforms(patient, planned):
    n, logic = planned.nodes, planned.logic
    mag0 = n["gre_magnitude"][0]
    assert len(n["gre_magnitude"]) == len(n["gre_phase"]) == 4
    np.testing.assert_allclose(mrml.ras_from_ijk_of(mag0), patient.gre.ras_from_ijk, atol=1e-9)
    assert mag0.GetParentTransformNode().GetName() == "T1_from_GRE"
    world = mrml.volume_from_node(mag0, world=True).ras_from_ijk
    np.testing.assert_allclose(world, patient.transforms["t1_from_gre"] @ patient.gre.ras_from_ijk, atol=1e-6)
    assert n["T1"].GetParentTransformNode() is None
    np.testing.assert_allclose(mrml.ras_from_ijk_of(n["T1"]), patient.t1.ras_from_ijk)
    assert n["CT"].GetParentTransformNode().GetName() == "T1_from_CT"
    # the GRE comes back from the nodes exactly, with TEs, field and B0 direction
    gre = logic.gre_from_nodes(n["gre_magnitude"][2], n["gre_phase"][0])
    np.testing.assert_array_equal(gre.magnitude, patient.gre.magnitude)
    np.testing.assert_array_equal(gre.phase_rad, patient.gre.phase_rad)
    np.testing.assert_allclose(gre.te_s, patient.gre.te_s)
    np.testing.assert_allclose(gre.b0_dir_ijk, patient.gre.b0_dir_ijk)
    assert gre.b0_tesla == 3.0
    with pytest.raises(InputError):
        logic.gre_from_nodes(n["gre_magnitude"][0], None)
    lm = logic.landmarks()
    assert list(lm) == ["AC", "PC", "MS"]
    np.testing.assert_allclose(lm["PC"], patient.landmarks["PC"])
    truth = logic.node("Truth labels", "vtkMRMLSegmentationNode")
    assert set(mrml.segment_names(truth)) == set(CIT.values()) | {"vein"}


def test_qsm_node_display_and_segments(planned):
    display = planned.qsm.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    assert display.GetWindowLevelMin() == pytest.approx(-0.15) and display.GetWindowLevelMax() == pytest.approx(0.25)
    assert mrml.segment_names(planned.seg) == list(NUCLEI.values())
    assert planned.seg.GetParentTransformNode().GetName() == "T1_from_GRE"


def test_side_plans_are_the_workflow_stage_on_the_same_data(patient, planned):
    """The panel adds no planning of its own: each side plan equals ``workflow.stages.plan_side`` called on
    the patient's arrays (labels, χ, transforms, landmarks, frame pose) without any MRML."""
    t1_from_gre = patient.transforms["t1_from_gre"]
    labels = _nuclei_labelmap(patient)
    risk, _ = stages.risk_map(patient.truth["chi_ppm"], None, labels, patient.t1, t1_from_gre)
    xyz_from_t1 = planned.logic.xyz_from_world(planned.nodes["CT"])
    assert xyz_from_t1 is None                                    # no frame pose yet
    for side, s in (("left", "L"), ("right", "R")):
        got = planned.plans[side]["plan"]
        want = stages.plan_side(side, labels, risk, t1_from_gre, patient.landmarks, None, PlanSettings())
        np.testing.assert_allclose(got.target_ras, want.target_ras, atol=1e-9)
        np.testing.assert_allclose(got.chosen.entry_ras, want.chosen.entry_ras, atol=1e-9)
        assert got.plan["statement"] == want.plan["statement"]
        assert got.plan["safety"] == want.plan["safety"]
        assert _in_ellipsoid(patient, f"STN_{s}", got.target_ras)
        assert got.chosen.safe and got.chosen.vessel_clearance_mm >= 3.0
        # the line runs from the entry to the target; the lead's axis is the trajectory
        nodes = planned.plans[side]
        line = mrml.fiducials_to_dict(nodes["line"])
        np.testing.assert_allclose(line["target"], got.target_ras)
        np.testing.assert_allclose(line["entry"], got.chosen.entry_ras)
        length = np.linalg.norm(got.chosen.entry_ras - got.target_ras)
        axis = (got.chosen.entry_ras - got.target_ras) / length
        pts = vtk_to_numpy(nodes["electrode"].GetPolyData().GetPoints().GetData())
        rel = pts - got.target_ras
        along = rel @ axis
        radial = np.linalg.norm(rel - np.outer(along, axis), axis=1)
        assert along.min() < 0.0 and along.max() > length
        assert radial.max() == pytest.approx(0.635, abs=0.02)          # Medtronic 3389, 1.27 mm
        assert got.placement.model.key == "medtronic_3389" and len(got.placement.contacts) == 4
        assert np.sign(got.chosen.entry_ras[0] - got.target_ras[0]) == (-1 if s == "L" else 1)
    assert set(planned.logic.trajectories()) == {"L", "R"}


def test_the_textbook_path_is_blocked_and_the_ranked_entries_avoid_the_vein(patient, planned):
    logic, qsm, seg, nodes = planned.logic, planned.qsm, planned.seg, planned.nodes
    first = logic.side_plans["left"]
    standard = first.search.standard
    assert standard.elevation_deg == pytest.approx(60.0, abs=0.1) and not standard.safe
    # the suggestions table: ranked candidates keep the margin, the standard (rank 0) does not
    rows = mrml.table_to_rows(logic.node("Suggestions_L", "vtkMRMLTableNode"))
    ranked = [r for r in rows if r["rank"] > 0]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1)) and len(ranked) >= 3
    assert all(r["safe"] == "yes" and r["vessel_clearance_mm"] >= 3.0 for r in ranked)
    assert [r["risk"] for r in ranked] == sorted(r["risk"] for r in ranked)
    assert [r["safe"] for r in rows if r["rank"] == 0] == ["no"]
    # the surgeon takes the textbook entry anyway: it is scored, and the profile shows the vein crossing
    logic.use_entry("left", standard.entry_ras, qsm, seg, nodes["T1"], nodes["CT"])
    scored = logic.side_plans["left"]
    np.testing.assert_allclose(scored.target_ras, first.target_ras)
    assert scored.chosen.label == "surgeon's entry" and not scored.chosen.safe
    table, _ = logic.distance_profile("left")
    prof = mrml.table_to_rows(table)
    depth = np.array([r["depth_mm"] for r in prof])
    dist = np.array([r["vessel_distance_mm"] for r in prof])
    crossing = np.linalg.norm(patient.vein_crossing_t1 - scored.target_ras)
    assert np.nanmin(dist[np.abs(depth - crossing) < 2.0]) < 1.3
    assert np.nanmax(dist[depth < 8]) > 5.0
    clearance = np.array([r["vessel_clearance_mm"] for r in prof])
    ok = np.isfinite(dist) & np.isfinite(clearance)
    assert ok.sum() > 20 and np.all(clearance[ok] <= dist[ok] + 1e-6)  # instrument surfaces nearer than the axis
    assert table.GetAttribute("QSMPlanner.Safe") == "no"
    logic.plan_side("left", qsm, seg, nodes["T1"], nodes["CT"])          # back to the suggestion
    np.testing.assert_allclose(logic.side_plans["left"].chosen.entry_ras, first.chosen.entry_ras)


def test_probe_eye_slice_is_perpendicular_to_the_trajectory(patient, planned):
    import slicer
    logic = planned.logic
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLScene(planned.scene)
    slice_node = slice_logic.AddSliceNode("Probe")
    slice_logic.GetSliceCompositeNode().SetBackgroundVolumeID(planned.qsm.GetID())
    slice_node.SetDimensions(64, 64, 1)
    slice_node.SetFieldOfView(32.0, 32.0, 1.0)
    logic.probe_eye_slice(slice_node, "left", depth_mm=0.0)
    m = mrml.np_matrix(slice_node.GetSliceToRAS())
    target, entry = logic.trajectories()["L"]
    n = (entry - target) / np.linalg.norm(entry - target)
    np.testing.assert_allclose(m[:3, 2], n, atol=1e-6)
    np.testing.assert_allclose(m[:3, 3], target, atol=1e-6)
    assert abs(m[:3, 0] @ n) < 1e-9
    # the resliced QSM (no OpenGL) shows the STN in the middle of the probe's-eye plane
    reslice = slice_logic.GetBackgroundLayer().GetReslice()
    reslice.Update()
    img = vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(64, 64)
    centre = img[28:36, 28:36].mean()
    corners = np.concatenate([img[:6, :6].ravel(), img[-6:, -6:].ravel()]).mean()
    assert centre > 0.08 and corners < 0.05
    planned.scene.RemoveNode(slice_logic.GetSliceCompositeNode())
    planned.scene.RemoveNode(slice_node)


def test_coordinate_table_with_a_known_frame_pose(patient, planned):
    logic, ct = planned.logic, planned.nodes["CT"]
    logic.set_frame(ct, patient.transforms["xyz_from_ct"])
    try:
        table = logic.coordinates_table(ct, planned.qsm)
        rows = mrml.table_to_rows(table)
        assert [(r["side"], r["point"]) for r in rows] == [("midline", "AC"), ("midline", "PC"), ("midline", "MS"), ("left", "target"),
                                                           ("left", "entry"), ("right", "target"), ("right", "entry")]
        xyz_from_t1 = patient.transforms["xyz_from_ct"] @ np.linalg.inv(patient.transforms["t1_from_ct"])
        for row in rows:
            ras = np.array([row["R_RAS_mm"], row["A_RAS_mm"], row["S_RAS_mm"]])
            np.testing.assert_allclose([row["X_Leksell_mm"], row["Y_Leksell_mm"], row["Z_Leksell_mm"]],
                                       apply(xyz_from_t1, ras), atol=1e-6)
        np.testing.assert_allclose([rows[0]["R_RAS_mm"], rows[0]["A_RAS_mm"], rows[0]["S_RAS_mm"]],
                                   patient.landmarks["AC"])
        assert table.GetUseColumnTitleAsColumnHeader()       # names as the header, not an editable first row
        assert "Leksell" in table.GetAttribute("QSMPlanner.CoordinateSystems")
        # the plan document of the panel is the command line's schema
        doc = logic.document(ct, planned.qsm)
        assert set(doc["sides"]) == {"left", "right"} and doc["settings"] == PlanSettings().to_dict()
        assert doc["sides"]["left"]["frame"]["mounting"] == "lateral-right"
    finally:
        ct.RemoveAttribute(P.FRAME_ATTRIBUTE)


def test_stage_runs_in_a_worker_process_as_in_this_one(patient):
    """The same stage in a worker process and here gives the same result; an error in the worker comes back
    with its type and message; a cancelled worker stops."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=False)
    logic.settings = PlanSettings(bfr="vsharp", inversion="tkd")
    mag, pha = nodes["gre_magnitude"][0], nodes["gre_phase"][0]
    here = logic.run(logic.qsm_task(mag, pha, output_name="QSM here"))
    task = logic.qsm_task(mag, pha, output_name="QSM worker").start(background=True)
    fractions = []
    while not task.step():
        fractions.append(task.fraction)
        time.sleep(0.02)
    worker = task.finish()
    assert task.job is not None and max(fractions + [0.0]) > 0.0
    np.testing.assert_array_equal(mrml.volume_from_node(worker).data, mrml.volume_from_node(here).data)
    assert not list(task.job.dir.parent.glob(task.job.dir.name))          # the job folder is gone
    # an error raised in the worker (echo times out of order): same type and message as here
    with pytest.raises(InputError) as here_error:
        logic.run(logic.qsm_task(mag, pha, te_ms=[4.0, 12.0, 8.0, 16.0]))
    with pytest.raises(InputError) as worker_error:
        logic.run_in_process(logic.qsm_task(mag, pha, te_ms=[4.0, 12.0, 8.0, 16.0]))
    assert "strictly increasing" in str(here_error.value) and str(worker_error.value) == str(here_error.value)
    # cancel: the worker stops at its next progress check
    slow = logic.digital_patient_task(seed=0, small=True).start(background=True)
    t0 = time.monotonic()
    while slow.fraction <= 0.0 and time.monotonic() - t0 < 60:
        slow.step()
        time.sleep(0.05)
    slow.cancel()
    slow.wait()
    assert slow.cancelled and time.monotonic() - t0 < 60
    with pytest.raises(Cancelled):
        slow.finish()


def test_scene_saved_as_mrb_reads_back_with_transforms_observed(patient, planned, tmp_path):
    logic = planned.logic
    logic.set_frame(planned.nodes["CT"], patient.transforms["xyz_from_ct"])
    logic.coordinates_table(planned.nodes["CT"], planned.qsm)
    path = logic.save_scene(tmp_path / "plan.mrb")
    fresh = mrml.load_mrb(path)
    qsm = mrml.node_by_name(fresh, "QSM", "vtkMRMLScalarVolumeNode")
    assert qsm.GetParentTransformNode().GetName() == "T1_from_GRE"
    np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm), patient.gre.ras_from_ijk, atol=1e-6)
    np.testing.assert_allclose(mrml.transform_matrix(mrml.node_by_name(fresh, "T1_from_CT")),
                               patient.transforms["t1_from_ct"], atol=1e-9)
    assert mrml.segment_names(mrml.node_by_name(fresh, "Nuclei", "vtkMRMLSegmentationNode")) == list(NUCLEI.values())
    back = PlannerLogic(fresh)
    for s in ("L", "R"):
        np.testing.assert_allclose(back.trajectories()[s][0], logic.trajectories()[s][0], atol=1e-6)
    rows = mrml.table_to_rows(mrml.node_by_name(fresh, "Coordinates", "vtkMRMLTableNode"))
    assert [r["point"] for r in rows][:3] == ["AC", "PC", "MS"]
    assert mrml.node_by_name(fresh, "Electrode_L", "vtkMRMLModelNode").GetPolyData().GetNumberOfPoints() > 0
    ct = mrml.node_by_name(fresh, "CT", "vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(back.xyz_from_world(ct), logic.xyz_from_world(planned.nodes["CT"]), atol=1e-9)
    planned.nodes["CT"].RemoveAttribute(P.FRAME_ATTRIBUTE)


def test_offscreen_slice_and_3d_pictures_show_qsm_nuclei_and_trajectory(planned, tmp_path):
    render = pytest.importorskip("QSMPlannerLib.scene.render")
    target, entry = planned.logic.trajectories()["L"]
    d = (entry - target) / np.linalg.norm(entry - target)
    normal = np.cross(d, [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    try:
        rgb = render.render_slice(planned.scene, planned.qsm, normal=normal, transverse=[1.0, 0.0, 0.0],
                                  center_ras=target + 15 * d, fov_mm=90.0, size=(320, 320))
    except Exception as exc:  # no EGL/OSMesa on this machine
        pytest.skip(f"offscreen rendering unavailable: {exc}")
    stats = render.picture_stats(rgb)
    assert rgb.shape == (320, 320, 3)
    assert stats["std"] > 8.0                       # QSM texture, not a blank picture
    assert stats["coloured_fraction"] > 0.003       # segment fill/outline and the trajectory
    # without overlays the same slice has (almost) no colour: the colour comes from the nuclei/trajectory
    hidden = [n for n in mrml.nodes_by_class(planned.scene, "vtkMRMLDisplayableNode")
              if n.GetDisplayNode() is not None and n.GetDisplayNode().GetVisibility()
              and not n.IsA("vtkMRMLVolumeNode")]
    for n in hidden:
        n.GetDisplayNode().SetVisibility(False)
    grey = render.render_slice(planned.scene, planned.qsm, normal=normal, transverse=[1.0, 0.0, 0.0],
                               center_ras=target + 15 * d, fov_mm=90.0, size=(320, 320))
    for n in hidden:
        n.GetDisplayNode().SetVisibility(True)
    assert render.picture_stats(grey)["coloured_fraction"] < stats["coloured_fraction"] / 5
    render.save_png(rgb, tmp_path / "slice.png")
    three = render.render_3d(planned.scene, size=(320, 240), focus_ras=target, distance_mm=200.0)
    s3 = render.picture_stats(three)
    assert s3["non_background_fraction"] > 0.01 and s3["coloured_fraction"] > 0.005
    render.save_png(three, tmp_path / "3d.png")
    assert (tmp_path / "slice.png").stat().st_size > 1000


# ---- each stage's result -> nodes mapping (the apply step), with the stage's result given --------
def test_stage_results_become_nodes_observed_or_hardened(patient):
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=False, known_transforms=False)
    mag, pha, t1, ct = nodes["gre_magnitude"][0], nodes["gre_phase"][0], nodes["T1"], nodes["CT"]
    assert mag.GetParentTransformNode() is None

    logic.settings = PlanSettings(bfr="pdf", inversion="tkd")
    qsm_task = logic.qsm_task(mag, pha)
    qsm = qsm_task.apply_result(SimpleNamespace(chi_ppm=patient.truth["chi_ppm"], messages=["ok"], mask=None))
    assert qsm.GetName() == "QSM" and qsm.GetAttribute("QSMPlanner.Method") == "pdf+tkd"
    assert logic.messages == ["QSM: ok"]

    t = patient.transforms["t1_from_gre"]
    moved = [n for n in logic.gre_nodes_for(mag) if n is not mag] + [qsm]
    reg = logic.registration_task(t1, mag, "T1_from_GRE", moved)
    assert reg.stage == "register_gre_to_t1"
    tnode = reg.apply_result(SimpleNamespace(fixed_from_moving=t, metric_final=-0.5, qc={"restart_disagreement_mm": 0.1}))
    assert all(n.GetParentTransformNode() is tnode for n in [mag] + moved)      # observed
    np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm), patient.gre.ras_from_ijk, atol=1e-9)
    np.testing.assert_allclose(mrml.volume_from_node(qsm, world=True).ras_from_ijk, t @ patient.gre.ras_from_ijk,
                               atol=1e-6)
    assert logic.registration_qc["gre_to_t1"] == {"restart_disagreement_mm": 0.1}
    t_ct = patient.transforms["t1_from_ct"]
    logic.set_frame(ct, patient.transforms["xyz_from_ct"])       # frame known in the CT's own RAS
    reg_ct = logic.registration_task(t1, ct, "T1_from_CT", harden=True)
    assert reg_ct.stage == "register_to_t1"
    reg_ct.apply_result(SimpleNamespace(fixed_from_moving=t_ct, metric_final=-0.4, qc={}))
    assert ct.GetParentTransformNode() is None                                  # hardened
    np.testing.assert_allclose(mrml.ras_from_ijk_of(ct), t_ct @ patient.ct.ras_from_ijk, atol=1e-6)
    xyz_from_t1 = patient.transforms["xyz_from_ct"] @ np.linalg.inv(t_ct)
    np.testing.assert_allclose(logic.xyz_from_world(ct), xyz_from_t1, atol=1e-9)  # the pose followed

    prior = mrml.add_volume(scene, patient.truth["labels_gre"], "prior", kind="labelmap")
    seg_task = logic.segmentation_task(qsm, prior_node=prior)
    seg_result = SimpleNamespace(labelmap=_nuclei_labelmap(patient), names=NUCLEI, messages=[])
    seg = seg_task.apply_result((None, seg_result))
    assert mrml.segment_names(seg) == list(NUCLEI.values())
    assert seg.GetParentTransformNode() is tnode
    np.testing.assert_array_equal(logic.nuclei_labels(seg, qsm).data, seg_result.labelmap.data)
    with pytest.raises(InputError):
        logic.segmentation_task(qsm)                                            # neither T1 nor prior

    from QSMPlannerLib.stereotaxy import get_system
    leksell = get_system("leksell")
    image_from_frame = np.linalg.inv(leksell.frameras_from_native @ xyz_from_t1)
    frame = logic.frame_task(ct).apply_result(SimpleNamespace(
        xyz_from_ras=xyz_from_t1, fre_mm=0.3, system="leksell", frame_system=leksell,
        image_from_frame=image_from_frame, fiducial_markups=lambda: {"right first start": [1.0, 2.0, 3.0]}))
    assert frame.fre_mm == 0.3 and ct.GetAttribute("QSMPlanner.FRE_mm") == "0.3"
    assert logic.frame_system(ct) == "leksell" and logic.node("Leksell G frame") is not None
    p = np.array([-12.0, -2.0, -4.0])
    np.testing.assert_allclose(apply(logic.xyz_from_world(ct), p), apply(xyz_from_t1, p), atol=1e-9)


def test_segment_editor_edits_are_what_the_plan_uses(patient):
    """The segmentation node is the source of truth: an STN moved in the editor moves the suggested target
    by as much, and the vein mask (which leaves the nuclei out) follows the edit."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=False, known_transforms=True)
    t_gre = nodes["T1_from_GRE"]
    qsm = mrml.add_volume(scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=t_gre)
    labels = _nuclei_labelmap(patient)
    seg = mrml.add_segmentation(scene, labels, NUCLEI, "Nuclei", parent_transform=t_gre)
    before = logic.plan_side("left", qsm, seg, nodes["T1"])["plan"].target_ras
    # the surgeon moves STN_L two voxels along +i in the editor (a new labelmap for that segment)
    shifted = np.asarray(labels.data).copy()
    stn = shifted == 1
    shifted[stn] = 0
    shifted[np.roll(stn, 2, axis=0)] = 1
    edited = mrml.add_segmentation(mrml.new_scene(), Volume(shifted, labels.ras_from_ijk), {1: "STN_L"}, "tmp")
    new_rep = edited.GetSegmentation().GetSegment("STN_L").GetRepresentation(
        mrml.slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    seg.GetSegmentation().GetSegment("STN_L").AddRepresentation(
        mrml.slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(), new_rep)
    assert logic.nuclei_labels(seg, qsm).data[np.roll(stn, 2, axis=0)].tolist().count(1) == stn.sum()
    after = logic.plan_side("left", qsm, seg, nodes["T1"])["plan"].target_ras
    expected = patient.transforms["t1_from_gre"][:3, :3] @ (2.0 * labels.ras_from_ijk[:3, 0])
    np.testing.assert_allclose(after - before, expected, atol=0.8)
    # reset (scene closed): the plans and the cached risk map are gone
    logic.reset()
    assert logic.side_plans == {} and not logic.has_risk_map(qsm, seg, nodes["T1"])


def test_blocked_target_gets_a_safer_target_inside_the_stn(patient):
    """A vein running up beside the suggested left target blocks every entry (the lateral microelectrode
    track passes within the margin): the plan moves the target to the nearest STN point with a safe entry
    and says so, as ``qsmplanner run`` does."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, known_transforms=True)
    t_gre = nodes["T1_from_GRE"]
    lab = _nuclei_labelmap(patient)
    seg = mrml.add_segmentation(scene, lab, NUCLEI, "Nuclei", parent_transform=t_gre)
    from QSMPlannerLib.planning import suggest_target
    t1_from_gre = patient.transforms["t1_from_gre"]
    target = apply(t1_from_gre, suggest_target(lab, "left"))
    grid_t1 = apply(t1_from_gre, lab.voxel_ras_grid())
    axis = target + np.array([-5.5, 0.0, 0.0])                      # 5.5 mm lateral, running up (S)
    radial = np.linalg.norm((grid_t1 - axis)[..., :2], axis=-1)
    chi = np.array(patient.truth["chi_ppm"].data, np.float32)
    chi[(radial < 1.0) & (grid_t1[..., 2] > target[2] - 10)] = 0.45
    qsm = mrml.add_volume(scene, Volume(chi, lab.ras_from_ijk), "QSM", kind="qsm", parent_transform=t_gre)
    sp = logic.plan_side("left", qsm, seg, nodes["T1"])["plan"]
    adj = sp.plan["target_adjustment"]
    assert adj is not None and np.allclose(adj["suggested_RAS_mm"], target)
    assert 0.0 < np.linalg.norm(sp.target_ras - target) <= 2.5 and sp.chosen.safe
    assert sp.plan["statement"].startswith("Target moved")
    ijk = np.round(lab.ras_to_ijk(apply(np.linalg.inv(t1_from_gre), sp.target_ras))).astype(int)
    assert NUCLEI[int(np.asarray(lab.data)[tuple(ijk)])] == "STN_L"
    # a surgeon's target is never moved: scored as it is, and not safe
    kept = logic.plan_side("left", qsm, seg, nodes["T1"], target_ras=target)["plan"]
    np.testing.assert_allclose(kept.target_ras, target)
    assert kept.plan["target_adjustment"] is None and not kept.chosen.safe


def test_seeded_segmentation_puts_the_nucleus_at_the_surgeons_point(patient):
    """Semi-automatic mode in the module: the prior lacks STN_L, and a point labelled STN_L placed in
    the T1 world (the QSM observed under its registration transform) puts it there."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=False, known_transforms=True)
    qsm = mrml.add_volume(scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=nodes["T1_from_GRE"])
    truth = patient.truth["labels_gre"]
    without = np.where(np.asarray(truth.data) == 16, 0, np.asarray(truth.data)).astype(np.int16)
    prior = mrml.add_volume(scene, Volume(without, truth.ras_from_ijk, "prior"), "prior", kind="labelmap")
    seed_t1 = np.array(patient.centres_t1["STN_L"]) + [0.8, -1.0, 0.5]      # inside, off its centre
    seeds = mrml.add_fiducials(scene, {"STN_L": seed_t1}, "seeds")
    task = logic.segmentation_task(qsm, prior_node=prior, seeds_node=seeds).start(background=False)
    _, seg = task.result
    assert seg.source["STN_L"] == "refined (seeded)"
    centre_t1 = apply(patient.transforms["t1_from_gre"], seg.centroid_ras("STN_L"))
    assert np.linalg.norm(centre_t1 - patient.centres_t1["STN_L"]) < 1.0
    mask, true_mask = seg.mask("STN_L"), np.asarray(truth.data) == 16
    assert 2.0 * (mask & true_mask).sum() / (mask.sum() + true_mask.sum()) > 0.8
    # a point whose label names no structure is refused, naming the point list
    bad = mrml.add_fiducials(scene, {"STN": seed_t1}, "bad seeds")
    with pytest.raises(InputError, match="bad seeds"):
        logic.segmentation_task(qsm, prior_node=prior, seeds_node=bad)


def test_registered_frame_shows_on_the_ct_and_follows_it():
    """A CRW frame registered on its CT becomes a transform node whose localizer model sits on the rods the
    CT shows (the fitted rod end points lie on the model's rods), a point list of the fiducials, and the
    plan's coordinates are CRW LAT, AP, VERT; hardening the CT into the T1 takes all of it along."""
    from QSMPlannerLib.stereotaxy import frame_ct_grid, frame_pose, render_frame_ct
    ras_from_ijk, shape = frame_ct_grid("crw", (1.0, 1.0, 2.0))
    ct = render_frame_ct(ras_from_ijk, shape, frame_pose((3.0, -2.0, 4.0), (2.0, -3.0, 1.0)), "crw",
                         rng=np.random.default_rng(0))
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    ct_node = mrml.add_volume(scene, ct, "CT")
    frame = logic.run(logic.frame_task(ct_node))
    assert frame.system == "crw" and logic.frame_system(ct_node) == "crw"
    transform = logic.node("CRW frame", "vtkMRMLLinearTransformNode")
    np.testing.assert_allclose(mrml.transform_matrix(transform), frame.image_from_frame, atol=1e-9)
    model = logic.node("CRW localizer (model)", "vtkMRMLModelNode")
    assert model.GetParentTransformNode() is transform
    rods_ct = [(apply(frame.image_from_frame, a), apply(frame.image_from_frame, b))
               for plate in frame.frame_system.plates.values() for a, b in plate.rods()]

    def to_model(p):
        return min(np.linalg.norm(np.cross(b - a, p - a)) / np.linalg.norm(b - a) for a, b in rods_ct)
    fid = mrml.fiducials_to_dict(logic.node("Localizer fiducials", "vtkMRMLMarkupsFiducialNode"))
    ends = [p for label, p in fid.items() if label.endswith(("start", "end"))]
    assert len(ends) >= 12 and max(to_model(p) for p in ends) < 0.5
    # the CT registered to the T1 and hardened: the frame's transform and fiducials go with it
    t1_from_ct = np.eye(4)
    t1_from_ct[:3, :3] = rotation_matrix([2.0, 0.0, -3.0])
    t1_from_ct[:3, 3] = [5.0, -4.0, 2.0]
    p_ct = np.array([10.0, 20.0, 30.0])
    before = apply(logic.xyz_from_world(ct_node), p_ct)
    fid_before = mrml.fiducials_to_dict(logic.node("Localizer fiducials", "vtkMRMLMarkupsFiducialNode"), world=True)
    logic.set_transform(ct_node, t1_from_ct, "T1_from_CT", harden=True)
    np.testing.assert_allclose(apply(logic.xyz_from_world(ct_node), apply(t1_from_ct, p_ct)), before, atol=1e-9)
    np.testing.assert_allclose(mrml.world_from_node_matrix(model), t1_from_ct @ frame.image_from_frame, atol=1e-6)
    fid_after = mrml.fiducials_to_dict(logic.node("Localizer fiducials", "vtkMRMLMarkupsFiducialNode"), world=True)
    for label, p in fid_before.items():
        np.testing.assert_allclose(fid_after[label], apply(t1_from_ct, p), atol=1e-6)


def test_echoes_loaded_by_slicers_dicom_module_bring_their_echo_times(tmp_path):
    """Magnitude and phase echoes loaded as separate volumes by Slicer's DICOM module (each with its
    DICOM.instanceUIDs): the echo times, parts, field and the phase scaling come from the DICOM headers of
    the files behind them, whichever echo the user selected; the QSM remembers its echoes (R2*)."""
    import pydicom
    from pydicom.uid import generate_uid
    sys_path = str(Path(__file__).resolve().parent)
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from test_io_dicom import RAS_FROM_IJK, TE_MS, phase_error, truth, write_slices
    from QSMPlannerLib.io import read_volume
    rng = np.random.default_rng(7)
    mag, phase = truth(rng)
    scene = mrml.new_scene()
    files = {}

    def load_series(directory, stored, header):
        write_slices(directory, stored, RAS_FROM_IJK, header, rng, series_uid=generate_uid())
        uids = []
        for f in sorted(directory.iterdir()):
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            files[uid] = str(f)
            uids.append(uid)
        node = mrml.add_volume(scene, read_volume(directory), directory.name)
        node.SetAttribute("DICOM.instanceUIDs", " ".join(uids))      # as Slicer's DICOM module sets it
        return node

    nodes = {}
    for e in (2, 0, 1):                                                 # loaded in any order
        common = {"Manufacturer": "SIEMENS", "MagneticFieldStrength": 2.89362, "EchoTime": TE_MS[e],
                  "EchoNumbers": e + 1}
        nodes[("m", e)] = load_series(tmp_path / f"mag{e}", mag[..., e],
                                      {**common, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]})
        stored = np.mod(np.round((phase[..., e] + np.pi) * 4096 / (2 * np.pi)), 4096)
        nodes[("p", e)] = load_series(tmp_path / f"pha{e}", stored,
                                      {**common, "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"],
                                       "RescaleSlope": 2, "RescaleIntercept": -4096})
    logic = PlannerLogic(scene, dicom_files=lambda node: [files[u] for u in node.GetAttribute("DICOM.instanceUIDs").split()])
    gre = logic.gre_from_nodes(nodes[("m", 1)], nodes[("p", 2)])
    assert gre.n_echoes == 3 and np.allclose(gre.te_s, np.array(TE_MS) / 1000.0)
    assert gre.b0_tesla == pytest.approx(2.89362)
    np.testing.assert_array_equal(gre.magnitude, np.moveaxis(np.stack([mag[..., e] for e in range(3)]), 0, -1))
    assert phase_error(gre.phase_rad, phase) < np.pi / 4096 + 1e-5
    task = logic.qsm_task(nodes[("m", 0)], nodes[("p", 0)])
    assert np.allclose(task.kwargs["gre"].te_s, np.array(TE_MS) / 1000.0)
    # without the database the echo times are asked for, naming the volume
    with pytest.raises(InputError, match="echo times"):
        PlannerLogic(scene).gre_from_nodes(nodes[("m", 0)], nodes[("p", 0)])
