"""The module's logic (QSMPlannerLib.scene.logic.PlannerLogic) on a real MRML scene (slicer-core wheel):
patient loaded as nodes, geometry (IJK->RAS, oblique), observed vs hardened transforms, markups, segments,
trajectory and electrode, ranked entries away from a vein, frame coordinates, background tasks with
cancel, the scene saved as .mrb and read back, and offscreen pictures drawn by Slicer's displayable
managers, on a small synthetic patient (fast). The real stages on the digital patient: test_module_flow.py.
"""
import os
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
pytest.importorskip("slicer")

from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

from QSMPlannerLib.errors import InputError  # noqa: E402
from QSMPlannerLib.io.gre import GAMMA_HZ_PER_T, MultiEchoGRE, b0_dir_from_geometry  # noqa: E402
from QSMPlannerLib.progress import Cancelled  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402
from QSMPlannerLib.scene.logic import PlannerLogic, StageTask, standard_entry  # noqa: E402
from QSMPlannerLib.volume import Volume, rotation_matrix  # noqa: E402

NUCLEI = {1: "STN_L", 2: "STN_R", 3: "SN_L", 4: "SN_R", 5: "RN_L", 6: "RN_R"}
CIT = {16: "STN_L", 116: "STN_R", 7: "SN_L", 107: "SN_R", 8: "RN_L", 108: "RN_R"}


def _affine(rot_deg, shift):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rot_deg)
    m[:3, 3] = shift
    return m


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
    crossing = target_t1 + 25.0 * (standard_entry(target_t1, "left") - target_t1) / 70.0
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


@pytest.fixture(scope="module")
def patient():
    return synthetic_patient()


@pytest.fixture(scope="module")
def planned(patient):
    """A scene with the patient as nodes (known transforms), QSM, nuclei, landmarks and both trajectories."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=True, known_transforms=True)
    t_gre = nodes["T1_from_GRE"]
    qsm = mrml.add_volume(scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=t_gre)
    seg = mrml.add_segmentation(scene, _nuclei_labelmap(patient), NUCLEI, "Nuclei", parent_transform=t_gre)
    plans = {side: logic.plan_trajectory(side, segmentation_node=seg) for side in ("left", "right")}
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


def test_targets_are_stn_centroids_in_t1_space_and_electrodes_follow_the_line(patient, planned):
    for side, s in (("left", "L"), ("right", "R")):
        plan = planned.plans[side]
        true_centre = np.asarray(patient.centres_t1[f"STN_{s}"])
        assert np.linalg.norm(plan["target_ras"] - true_centre) < 0.7   # voxel 1.25 mm
        line = mrml.fiducials_to_dict(plan["line"])
        np.testing.assert_allclose(line["target"], plan["target_ras"])
        np.testing.assert_allclose(line["entry"], plan["entry_ras"])
        # textbook approach without a brain mask: 80 mm, 60 deg above AC-PC, 20 deg lateral (outward)
        length = np.linalg.norm(plan["entry_ras"] - plan["target_ras"])
        assert length == pytest.approx(80.0)
        np.testing.assert_allclose(plan["entry_ras"], standard_entry(plan["target_ras"], side, depth_mm=80.0),
                                   atol=1e-6)
        assert np.sign(plan["entry_ras"][0] - plan["target_ras"][0]) == (-1 if s == "L" else 1)
        # the lead (Medtronic 3389, 1.27 mm): its axis is the trajectory, contacts centred on the target
        pts = vtk_to_numpy(plan["electrode"].GetPolyData().GetPoints().GetData())
        axis = (plan["entry_ras"] - plan["target_ras"]) / length
        rel = pts - plan["target_ras"]
        along = rel @ axis
        radial = np.linalg.norm(rel - np.outer(along, axis), axis=1)
        assert -8.0 < along.min() < -2.0 and along.max() > 80.0
        assert radial.max() == pytest.approx(0.635, abs=0.02)
        cpts = vtk_to_numpy(plan["contacts"].GetPolyData().GetPoints().GetData())
        c_along = (cpts - plan["target_ras"]) @ axis
        assert abs(0.5 * (c_along.min() + c_along.max())) < 0.5          # contact span centred on the target
        assert plan["placement"].model.key == "medtronic_3389" and len(plan["placement"].contacts) == 4
    traj = planned.logic.trajectories()
    assert set(traj) == {"L", "R"}


def test_ranked_entries_avoid_the_vein_that_blocks_the_textbook_path(patient, planned):
    logic = planned.logic
    table, _ = logic.distance_profile("left", planned.qsm, planned.seg)
    prof = mrml.table_to_rows(table)
    depth = np.array([r["depth_mm"] for r in prof])
    dist = np.array([r["vessel_distance_mm"] for r in prof])
    # the vein crosses the textbook path 25 mm above the target: distance ~0 there, larger far from it
    near = np.abs(depth - 25.0) < 1.0
    assert np.nanmin(dist[near]) < 1.3
    assert np.nanmax(dist[depth < 10]) > 5.0
    clearance = np.array([r["vessel_clearance_mm"] for r in prof])
    inside = np.isfinite(dist)                                     # the QSM grid ends below the entry
    assert inside[:40].all() and np.all(clearance[inside] <= dist[inside] + 1e-6)  # surfaces nearer than the axis
    assert table.GetAttribute("QSMPlanner.Safe") == "no"
    rows = mrml.table_to_rows(logic.rank_entries("left", planned.qsm, planned.seg, margin_mm=2.0))
    ranked = [r for r in rows if r["rank"] > 0]
    standard = [r for r in rows if r["rank"] == 0]
    assert [r["rank"] for r in ranked] == list(range(1, len(ranked) + 1)) and len(ranked) >= 3
    assert len(standard) == 1 and standard[0]["safe"] == "no"         # the vein blocks the textbook path
    assert standard[0]["elevation_deg"] == pytest.approx(60.0, abs=0.1)
    for r in ranked:                                                   # every suggestion keeps the margin
        assert r["safe"] == "yes" and r["vessel_clearance_mm"] >= 2.0
        assert r["min_vessel_distance_mm"] > np.nanmin(dist[depth > 2.0]) + 1.0
    risks = [r["risk"] for r in ranked]
    assert risks == sorted(risks)
    assert "2 mm" in table_statement(logic, "L")


def table_statement(logic, s):
    return logic.node(f"Suggestions_{s}", "vtkMRMLTableNode").GetAttribute("QSMPlanner.Statement")


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
    logic.probe_eye_slice(slice_node, "left", depth_mm=25.0)        # the vein crossing
    reslice.Update()
    img = vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(64, 64)
    assert img.max() > 0.3
    planned.scene.RemoveNode(slice_logic.GetSliceCompositeNode())
    planned.scene.RemoveNode(slice_node)


def test_coordinate_table_with_a_known_frame_pose(patient, planned):
    logic = planned.logic
    ct = planned.nodes["CT"]
    logic.set_frame(ct, patient.transforms["xyz_from_ct"])
    table = logic.coordinates_table(ct, mounting="lateral-right")
    rows = {r["point"]: r for r in mrml.table_to_rows(table)}
    assert set(rows) == {"AC", "PC", "MS", "target_L", "entry_L", "target_R", "entry_R"}
    xyz_from_t1 = patient.transforms["xyz_from_ct"] @ np.linalg.inv(patient.transforms["t1_from_ct"])
    for name, row in rows.items():
        ras = np.array([row["R"], row["A"], row["S"]])
        expect = xyz_from_t1[:3, :3] @ ras + xyz_from_t1[:3, 3]
        np.testing.assert_allclose([row["X"], row["Y"], row["Z"]], expect, atol=1e-6)
    np.testing.assert_allclose([rows["AC"]["R"], rows["AC"]["A"], rows["AC"]["S"]], patient.landmarks["AC"])
    assert "Leksell" in table.GetAttribute("QSMPlanner.CoordinateSystems")


def test_stage_task_reports_progress_cancels_and_passes_errors():
    seen = []

    def slow(progress):
        for i in range(200):
            progress.update(i / 200, f"step {i}")
            seen.append(i)
            time.sleep(0.005)
        return "finished"

    task = StageTask("slow", slow, lambda r: r.upper()).start()
    time.sleep(0.1)
    assert not task.done and 0.0 < task.fraction < 1.0 and task.message.startswith("step")
    task.cancel()
    task.wait(5)
    assert task.done and task.cancelled and len(seen) < 200
    with pytest.raises(Cancelled):
        task.finish()
    ok = StageTask("quick", lambda p: 21, lambda r: 2 * r).start()
    assert ok.wait(5).finish() == 42 and ok.fraction == 1.0
    bad = StageTask("bad", lambda p: (_ for _ in ()).throw(ValueError("boom")), lambda r: r).start().wait(5)
    assert isinstance(bad.error, ValueError) and "boom" in bad.error_trace
    with pytest.raises(ValueError):
        bad.finish()
    assert threading.active_count() >= 1


def test_scene_saved_as_mrb_reads_back_with_transforms_observed(patient, planned, tmp_path):
    planned.logic.set_frame(planned.nodes["CT"], patient.transforms["xyz_from_ct"])
    planned.logic.coordinates_table(planned.nodes["CT"], mounting="lateral-right")
    path = planned.logic.save_scene(tmp_path / "plan.mrb")
    fresh = mrml.load_mrb(path)
    qsm = mrml.node_by_name(fresh, "QSM", "vtkMRMLScalarVolumeNode")
    assert qsm.GetParentTransformNode().GetName() == "T1_from_GRE"
    np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm), patient.gre.ras_from_ijk, atol=1e-6)
    np.testing.assert_allclose(mrml.transform_matrix(mrml.node_by_name(fresh, "T1_from_CT")),
                               patient.transforms["t1_from_ct"], atol=1e-9)
    assert mrml.segment_names(mrml.node_by_name(fresh, "Nuclei", "vtkMRMLSegmentationNode")) == list(NUCLEI.values())
    back = PlannerLogic(fresh)
    for s in ("L", "R"):
        np.testing.assert_allclose(back.trajectories()[s][0], planned.logic.trajectories()[s][0], atol=1e-6)
    rows = mrml.table_to_rows(mrml.node_by_name(fresh, "Coordinates", "vtkMRMLTableNode"))
    assert [r["point"] for r in rows][:3] == ["AC", "PC", "MS"]
    assert mrml.node_by_name(fresh, "Electrode_L", "vtkMRMLModelNode").GetPolyData().GetNumberOfPoints() > 0
    ct = mrml.node_by_name(fresh, "CT", "vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(back.xyz_from_world(ct), planned.logic.xyz_from_world(planned.nodes["CT"]),
                               atol=1e-9)


def test_offscreen_slice_and_3d_pictures_show_qsm_nuclei_and_trajectory(planned, tmp_path):
    render = pytest.importorskip("QSMPlannerLib.scene.render")
    target, entry = planned.logic.trajectories()["L"]
    d = (entry - target) / np.linalg.norm(entry - target)
    normal = np.cross(d, [1.0, 0.0, 0.0])
    normal /= np.linalg.norm(normal)
    transverse = np.cross(normal, d)
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


# The stages on the real digital patient: test_module_flow.py.


# ---- each stage's result -> nodes mapping (the apply step), with the stage's result given --------
def test_stage_results_become_nodes_observed_or_hardened(patient):
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=False, known_transforms=False)
    mag, pha, t1, ct = nodes["gre_magnitude"][0], nodes["gre_phase"][0], nodes["T1"], nodes["CT"]
    assert mag.GetParentTransformNode() is None

    qsm_task = logic.qsm_task(mag, pha, bfr="pdf", inversion="tkd")
    qsm = qsm_task.apply(SimpleNamespace(chi_ppm=patient.truth["chi_ppm"], messages=["ok"]))
    assert qsm.GetName() == "QSM" and qsm.GetAttribute("QSMPlanner.Method") == "pdf+tkd"
    assert logic.messages == ["QSM: ok"]

    t = patient.transforms["t1_from_gre"]
    moved = [n for n in logic.gre_nodes_for(mag) if n is not mag] + [qsm]
    reg = logic.registration_task(t1, mag, "T1_from_GRE", moved)
    tnode = reg.apply(SimpleNamespace(fixed_from_moving=t, metric_final=-0.5))
    assert all(n.GetParentTransformNode() is tnode for n in [mag] + moved)      # observed
    np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm), patient.gre.ras_from_ijk, atol=1e-9)
    np.testing.assert_allclose(mrml.volume_from_node(qsm, world=True).ras_from_ijk, t @ patient.gre.ras_from_ijk,
                               atol=1e-6)
    t_ct = patient.transforms["t1_from_ct"]
    logic.set_frame(ct, patient.transforms["xyz_from_ct"])       # frame known in the CT's own RAS
    reg_ct = logic.registration_task(t1, ct, "T1_from_CT", harden=True)
    reg_ct.apply(SimpleNamespace(fixed_from_moving=t_ct, metric_final=-0.4))
    assert ct.GetParentTransformNode() is None                                  # hardened
    np.testing.assert_allclose(mrml.ras_from_ijk_of(ct), t_ct @ patient.ct.ras_from_ijk, atol=1e-6)
    xyz_from_t1 = patient.transforms["xyz_from_ct"] @ np.linalg.inv(t_ct)
    np.testing.assert_allclose(logic.xyz_from_world(ct), xyz_from_t1, atol=1e-9)  # the pose followed

    prior = mrml.add_volume(scene, patient.truth["labels_gre"], "prior", kind="labelmap")
    seg_task = logic.segmentation_task(qsm, prior_node=prior)
    seg_result = SimpleNamespace(labelmap=_nuclei_labelmap(patient), names=NUCLEI, messages=[])
    seg = seg_task.apply((None, seg_result))
    assert mrml.segment_names(seg) == list(NUCLEI.values())
    assert seg.GetParentTransformNode() is tnode and logic.segmentation_result is seg_result
    with pytest.raises(InputError):
        logic.segmentation_task(qsm)                                            # neither T1 nor prior

    frame = logic.frame_task(ct).apply(SimpleNamespace(xyz_from_ras=xyz_from_t1, fre_mm=0.3))
    assert frame.fre_mm == 0.3 and ct.GetAttribute("QSMPlanner.FRE_mm") == "0.3"
    p = np.array([-12.0, -2.0, -4.0])
    m = logic.xyz_from_world(ct)
    np.testing.assert_allclose(m[:3, :3] @ p + m[:3, 3], xyz_from_t1[:3, :3] @ p + xyz_from_t1[:3, 3], atol=1e-9)


def test_blocked_target_gets_a_safer_target_inside_the_stn(patient):
    """A vein running up beside the suggested left target blocks every entry (the lateral microelectrode
    track passes within the margin): the ranking says so and offers the nearest STN point with a safe
    entry, as run_patient moves its suggestion."""
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, known_transforms=True)
    t_gre = nodes["T1_from_GRE"]
    lab = _nuclei_labelmap(patient)
    logic.segmentation_result = lab
    seg = mrml.add_segmentation(scene, lab, NUCLEI, "Nuclei", parent_transform=t_gre)
    target = logic.suggest_target("left", seg)
    t1_from_gre = patient.transforms["t1_from_gre"]
    grid = lab.voxel_ras_grid()
    grid_t1 = grid @ t1_from_gre[:3, :3].T + t1_from_gre[:3, 3]
    axis = target + np.array([-5.5, 0.0, 0.0])                      # 5.5 mm lateral, running up (S)
    radial = np.linalg.norm((grid_t1 - axis)[..., :2], axis=-1)
    chi = np.array(patient.truth["chi_ppm"].data, np.float32)
    chi[(radial < 1.0) & (grid_t1[..., 2] > target[2] - 10)] = 0.45
    qsm = mrml.add_volume(scene, Volume(chi, lab.ras_from_ijk), "QSM", kind="qsm", parent_transform=t_gre)
    table = logic.rank_entries("left", qsm, seg, target_ras=target)
    assert not any(r["safe"] == "yes" for r in mrml.table_to_rows(table))
    safer = table.GetAttribute("QSMPlanner.SaferTargetRAS")
    assert safer and "has a safe entry" in table.GetAttribute("QSMPlanner.Statement")
    safer = np.array([float(v) for v in safer.split(",")])
    assert 0.0 < np.linalg.norm(safer - target) <= 2.5
    ijk = np.round(lab.ras_to_ijk(np.linalg.inv(t1_from_gre)[:3, :3] @ safer
                                  + np.linalg.inv(t1_from_gre)[:3, 3])).astype(int)
    assert NUCLEI[int(np.asarray(lab.data)[tuple(ijk)])] == "STN_L"
    rows = mrml.table_to_rows(logic.rank_entries("left", qsm, seg, target_ras=safer))
    assert any(r["rank"] > 0 and r["safe"] == "yes" for r in rows)


def test_seeded_segmentation_puts_the_nucleus_at_the_surgeons_point(patient):
    """Semi-automatic mode in the module: the prior lacks STN_L, and a point labelled STN_L placed in
    the T1 world (the QSM observed under its registration transform) puts it there."""
    from QSMPlannerLib.progress import Progress
    scene = mrml.new_scene()
    logic = PlannerLogic(scene)
    nodes = logic.load_patient_nodes(patient, show_truth=False, known_transforms=True)
    qsm = mrml.add_volume(scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=nodes["T1_from_GRE"])
    truth = patient.truth["labels_gre"]
    without = np.where(np.asarray(truth.data) == 16, 0, np.asarray(truth.data)).astype(np.int16)
    prior = mrml.add_volume(scene, Volume(without, truth.ras_from_ijk, "prior"), "prior", kind="labelmap")
    seed_t1 = np.array(patient.centres_t1["STN_L"]) + [0.8, -1.0, 0.5]      # inside, off its centre
    seeds = mrml.add_fiducials(scene, {"STN_L": seed_t1}, "seeds")
    task = logic.segmentation_task(qsm, prior_node=prior, seeds_node=seeds)
    _, seg = task.compute(Progress())
    assert seg.source["STN_L"] == "refined (seeded)"
    centre_gre = seg.centroid_ras("STN_L")
    t = patient.transforms["t1_from_gre"]
    centre_t1 = t[:3, :3] @ centre_gre + t[:3, 3]
    assert np.linalg.norm(centre_t1 - patient.centres_t1["STN_L"]) < 1.0
    mask, true_mask = seg.mask("STN_L"), np.asarray(truth.data) == 16
    assert 2.0 * (mask & true_mask).sum() / (mask.sum() + true_mask.sum()) > 0.8
    # a point whose label names no structure is refused, naming the point list
    bad = mrml.add_fiducials(scene, {"STN": seed_t1}, "bad seeds")
    with pytest.raises(InputError, match="bad seeds"):
        logic.segmentation_task(qsm, prior_node=prior, seeds_node=bad)
