"""The whole panel flow on a real small digital patient as MRML nodes (slicer-core wheel): GRE echoes ->
QSM -> GRE->T1 registration (observed) -> frame registration on the CT -> CT->T1 (hardened, the frame pose
following) -> nuclei on the QSM -> targets, ranked entries, electrodes -> coordinate table -> .mrb and
back, and offscreen pictures of the result. Every number is computed by the stages; the digital patient's
truth (transforms, STN centroids, frame pose) is what the results are checked against.

One flow (~50 s on an idle 2-core machine; the long stages in worker processes, as the panel runs them) feeds
every test of this file. The CT->T1 transform is the
patient's known one (a transform file, as a user may have); rigid CT->T1 registration is covered by
test_registration*.py. The atlas prior uses the patient's known MNI->T1 affine (normalize_to_mni takes
minutes and is covered by test_registration*.py / the in-Slicer self test).
"""
import os

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
pytest.importorskip("slicer")
pytest.importorskip("QSMPlannerLib.phantom")

from QSMPlannerLib.panel.flow import run_whole_flow  # noqa: E402
from QSMPlannerLib.panel.logic import PlannerLogic  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402

NUCLEI = ["STN_L", "STN_R", "SN_L", "SN_R", "RN_L", "RN_R", "GPi_L", "GPi_R", "GPe_L", "GPe_R"]
pytestmark = [pytest.mark.slow, pytest.mark.main_leg]


from QSMPlannerLib.volume import apply as _apply  # noqa: E402


@pytest.fixture(scope="module")
def flow():
    return run_whole_flow(seed=0, small=True, atlas="affine", ct_registration="known", harden_ct=True,
                          background=True, log=lambda m: None)


def test_inputs_and_qsm_keep_their_own_geometry_under_the_registered_transform(flow):
    p, n, logic = flow["patient"], flow["nodes"], flow["logic"]
    qsm, t_gre = flow["qsm"], flow["gre_transform"]
    np.testing.assert_allclose(mrml.ras_from_ijk_of(n["T1"]), p.t1.ras_from_ijk, atol=1e-6)
    assert len(n["gre_magnitude"]) == len(n["gre_phase"]) == p.gre.n_echoes
    for node in n["gre_magnitude"] + n["gre_phase"] + [qsm]:
        np.testing.assert_allclose(mrml.ras_from_ijk_of(node), p.gre.ras_from_ijk, atol=1e-6)   # IJK->RAS
        assert node.GetParentTransformNode() is t_gre                                          # observed
    mask = logic.scene.GetNodeByID(qsm.GetAttribute("QSMPlanner.MaskNodeID"))
    assert mask.IsA("vtkMRMLLabelMapVolumeNode") and mask.GetParentTransformNode() is t_gre
    assert qsm.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeGrey"
    # the registered GRE->T1 agrees with the truth within a millimetre over the brain
    truth = p.transforms["t1_from_gre"]
    reg = mrml.transform_matrix(t_gre)
    brain = np.argwhere(p.truth["brain_mask"].data > 0)[::997]
    pts = p.truth["brain_mask"].ijk_to_ras(brain)
    assert np.abs(_apply(reg, pts) - _apply(truth, pts)).max() < 1.0
    # the world image of the QSM is the T1-space picture: its grid maps through the transform
    world = mrml.volume_from_node(qsm, world=True)
    np.testing.assert_allclose(world.ras_from_ijk, reg @ p.gre.ras_from_ijk, atol=1e-6)
    # the reconstruction: deep nuclei more paramagnetic than white matter, as in the truth
    chi = mrml.volume_from_node(qsm).data
    labels = p.truth["labels_gre"].data
    nuclei, wm = np.isin(labels, [7, 8, 9, 16, 107, 108, 109, 116]), labels == 203
    truth_chi = p.truth["chi_ppm"].data
    assert chi[nuclei].mean() - chi[wm].mean() > 0.3 * (truth_chi[nuclei].mean() - truth_chi[wm].mean())


def test_ct_hardened_into_t1_space_and_the_frame_pose_follows(flow):
    p, ct, logic = flow["patient"], flow["nodes"]["CT"], flow["logic"]
    assert ct.GetParentTransformNode() is None                                           # hardened
    t1_from_ct = p.transforms["t1_from_ct"]
    np.testing.assert_allclose(mrml.ras_from_ijk_of(ct), t1_from_ct @ p.ct.ras_from_ijk, atol=1e-5)
    assert flow["frame"].fre_mm < 1.0 and flow["frame"].n_points >= 20
    assert float(ct.GetAttribute("QSMPlanner.FRE_mm")) == pytest.approx(flow["frame"].fre_mm)
    xyz_from_t1 = p.transforms["xyz_from_ct"] @ np.linalg.inv(t1_from_ct)
    pts = np.array([p.stn_centroids["STN_L"], p.stn_centroids["STN_R"], p.landmarks["AC"]])
    assert np.abs(_apply(logic.xyz_from_world(ct), pts) - _apply(xyz_from_t1, pts)).max() < 0.5


def test_nuclei_segmented_as_named_segments_on_the_qsm_grid(flow):
    p, seg, logic = flow["patient"], flow["segmentation"], flow["logic"]
    assert mrml.segment_names(seg) == NUCLEI
    assert seg.GetParentTransformNode() is flow["gre_transform"]
    qsm = mrml.volume_from_node(flow["qsm"])
    world = mrml.world_from_node_matrix(seg)
    for side in ("L", "R"):
        m = mrml.segment_mask(seg, f"STN_{side}", qsm)
        assert 10 < m.sum() < 400                                  # 2 mm voxels: STN ~ 150 mm^3
        centre = _apply(world, qsm.ijk_to_ras(np.argwhere(m).mean(axis=0)))
        assert np.linalg.norm(centre - p.stn_centroids[f"STN_{side}"]) < 3.0
    labels = logic.nuclei_labels(seg, flow["qsm"])
    assert labels.same_geometry(qsm) and set(np.unique(labels.data)) <= set(range(11))


def test_targets_in_the_stn_and_entries_from_the_ranked_search(flow):
    p, logic = flow["patient"], flow["logic"]
    risk = logic.risk_map(flow["qsm"], flow["segmentation"], flow["nodes"]["T1"])
    assert {"vessels", "brain", "ventricles", "sulci"} <= set(risk.layers)
    traj = logic.trajectories()
    assert set(traj) == {"L", "R"}
    for side, s in (("left", "L"), ("right", "R")):
        target, entry = traj[s]
        # the target (dorsolateral, moved off the veins) lies in the true STN: within 1.5 mm of a voxel
        # centre of its label on this 2 mm grid
        labels = p.truth["labels_t1"]
        stn = labels.ijk_to_ras(np.argwhere(np.asarray(labels.data) == (16 if s == "L" else 116)))
        assert np.min(np.linalg.norm(stn - target, axis=1)) < 1.5, side
        assert np.linalg.norm(target - p.stn_centroids[f"STN_{s}"]) < 6.0
        assert np.sign(entry[0] - target[0]) == (-1 if s == "L" else 1)      # lateral approach
        assert entry[1] > target[1] + 10.0 and entry[2] > target[2] + 30.0     # frontal, from above
        rows = mrml.table_to_rows(flow["plans"][side]["suggestions"])
        best = [r for r in rows if r["rank"] == 1][0]
        np.testing.assert_allclose(entry, [best["R"], best["A"], best["S"]], atol=1e-9)
        assert [r["rank"] for r in rows if r["rank"] > 0] == list(range(1, len(rows)))
        assert any(r["rank"] == 0 and r["label"] == "standard" for r in rows)
        prof = mrml.table_to_rows(flow["profiles"][side])
        assert prof[0]["depth_mm"] == 0.0 and prof[-1]["depth_mm"] == pytest.approx(
            np.linalg.norm(entry - target), abs=0.5)
        # the profile's minimum is the ranked clearance of the chosen path
        clearance = np.array([r["vessel_clearance_mm"] for r in prof])
        assert np.nanmin(clearance[np.isfinite(clearance)]) == pytest.approx(best["vessel_clearance_mm"], abs=0.6)
        search = logic.side_plans[side].search                   # ventricles from the T1 are in the risk map
        assert not search.best.crosses_ventricle and np.isfinite(search.best.ventricle_clearance_mm)
        plan = flow["plans"][side]
        assert plan["electrode"].GetPolyData().GetNumberOfPoints() > 0
        assert plan["plan"].placement.n_in_target >= 1              # a contact in the segmented STN
        line = mrml.fiducials_to_dict(plan["line"])
        np.testing.assert_allclose(line["target"], target, atol=1e-6)


def test_coordinate_table_names_its_systems_and_matches_the_frame(flow):
    from QSMPlannerLib.stereotaxy import acpc_coordinates, ring_arc
    p, logic, table = flow["patient"], flow["logic"], flow["table"]
    rows = mrml.table_to_rows(table)
    assert [(r["side"], r["point"]) for r in rows] == [("midline", "AC"), ("midline", "PC"), ("midline", "MS"),
                                                       ("left", "target"), ("left", "entry"),
                                                       ("right", "target"), ("right", "entry")]
    lm = p.landmarks
    xyz_from_t1 = p.transforms["xyz_from_ct"] @ np.linalg.inv(p.transforms["t1_from_ct"])
    for row in rows:
        ras = np.array([row["R_RAS_mm"], row["A_RAS_mm"], row["S_RAS_mm"]])
        xyz = np.array([row["X_Leksell_mm"], row["Y_Leksell_mm"], row["Z_Leksell_mm"]])
        assert np.abs(xyz - _apply(xyz_from_t1, ras)).max() < 0.5
        np.testing.assert_allclose([row["x_ACPC_mm"], row["y_ACPC_mm"], row["z_ACPC_mm"]],
                                   acpc_coordinates(ras, lm["AC"], lm["PC"], lm["MS"]), atol=1e-6)
    half = np.linalg.norm(lm["AC"] - lm["PC"]) / 2
    assert rows[0]["y_ACPC_mm"] == pytest.approx(half) and rows[1]["y_ACPC_mm"] == pytest.approx(-half)
    doc = logic.document(flow["nodes"]["CT"], flow["qsm"])
    for k, side in ((3, "left"), (5, "right")):
        t, e = rows[k], rows[k + 1]
        ra = ring_arc([t["X_Leksell_mm"], t["Y_Leksell_mm"], t["Z_Leksell_mm"]],
                      [e["X_Leksell_mm"], e["Y_Leksell_mm"], e["Z_Leksell_mm"]], "lateral-right")
        assert t["ring_deg"] == pytest.approx(ra.ring_deg) and t["arc_deg"] == pytest.approx(ra.arc_deg)
        assert t["mounting"] == "lateral-right"
        assert 100.0 - 30 < t["X_Leksell_mm"] < 100.0 + 30 and 80 < t["Z_Leksell_mm"] < 130  # near the centre
        assert doc["sides"][side]["frame"]["ring_deg"] == pytest.approx(ra.ring_deg)
    fr = doc["frame_registration"]
    assert fr["fre_mm"] < 1.0 and 0.0 < fr["predicted_tre_mm_at_frame_centre"] < 1.0
    assert "Leksell" in table.GetAttribute("QSMPlanner.CoordinateSystems")


def test_scene_saved_as_mrb_reads_back(flow, tmp_path):
    logic, p = flow["logic"], flow["patient"]
    path = logic.save_scene(tmp_path / "flow.mrb")
    assert 1e5 < path.stat().st_size < 60e6
    fresh = mrml.load_mrb(path)
    qsm = mrml.node_by_name(fresh, "QSM", "vtkMRMLScalarVolumeNode")
    assert qsm.GetParentTransformNode().GetName() == "T1_from_GRE"                    # still observed
    np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm), p.gre.ras_from_ijk, atol=1e-5)
    np.testing.assert_allclose(mrml.transform_matrix(qsm.GetParentTransformNode()),
                               mrml.transform_matrix(flow["gre_transform"]), atol=1e-6)
    np.testing.assert_allclose(mrml.volume_from_node(qsm).data, mrml.volume_from_node(flow["qsm"]).data, atol=1e-6)
    ct = mrml.node_by_name(fresh, "CT", "vtkMRMLScalarVolumeNode")
    assert ct.GetParentTransformNode() is None                                       # still hardened
    back = PlannerLogic(fresh)
    np.testing.assert_allclose(back.xyz_from_world(ct), logic.xyz_from_world(flow["nodes"]["CT"]), atol=1e-9)
    seg = mrml.node_by_name(fresh, "Nuclei", "vtkMRMLSegmentationNode")
    assert mrml.segment_names(seg) == NUCLEI and seg.GetParentTransformNode().GetName() == "T1_from_GRE"
    for s, (t, e) in logic.trajectories().items():
        np.testing.assert_allclose(back.trajectories()[s][0], t, atol=1e-5)
        np.testing.assert_allclose(back.trajectories()[s][1], e, atol=1e-5)
    before = mrml.table_to_rows(flow["table"])
    after = mrml.table_to_rows(mrml.node_by_name(fresh, "Coordinates", "vtkMRMLTableNode"))
    assert [r["point"] for r in after] == [r["point"] for r in before]
    keys = ("R_RAS_mm", "A_RAS_mm", "S_RAS_mm", "X_Leksell_mm", "Y_Leksell_mm", "Z_Leksell_mm")
    for a, b in zip(after, before):
        np.testing.assert_allclose([a[k] for k in keys], [b[k] for k in keys], atol=1e-3)  # TSV: 6 digits
    assert mrml.node_by_name(fresh, "Electrode_L", "vtkMRMLModelNode").GetPolyData().GetNumberOfPoints() > 0
    assert mrml.node_by_name(fresh, "Suggestions_R", "vtkMRMLTableNode") is not None


def test_offscreen_pictures_of_the_plan(flow, tmp_path):
    render = pytest.importorskip("QSMPlannerLib.scene.render")
    from QSMPlannerLib.panel.screenshots import write_screenshots
    logic = flow["logic"]
    try:
        slice_path, three_path = write_screenshots(logic, flow["qsm"], tmp_path, size=(400, 350))
    except Exception as exc:  # no EGL/OSMesa on this machine
        pytest.skip(f"offscreen rendering unavailable: {exc}")
    from PIL import Image
    for path in (slice_path, three_path):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        stats = render.picture_stats(rgb)
        assert rgb.shape == (350, 400, 3)
        assert stats["std"] > 8.0 and stats["coloured_fraction"] > 0.003, (path.name, stats)
    # the veins the entry search avoided are drawn (under the QSM's transform), away from the chosen paths
    veins = logic.node("Veins", "vtkMRMLModelNode")
    assert veins.GetParentTransformNode() is flow["gre_transform"]
    pts = np.asarray([veins.GetPolyData().GetPoint(i) for i in range(0, veins.GetPolyData().GetNumberOfPoints(), 7)])
    assert len(pts) > 20
    world = _apply(mrml.transform_matrix(flow["gre_transform"]), pts)
    for side, s in (("left", "L"), ("right", "R")):
        best = [r for r in mrml.table_to_rows(flow["plans"][side]["suggestions"]) if r["rank"] == 1][0]
        target, entry = logic.trajectories()[s]
        u = (entry - target) / np.linalg.norm(entry - target)
        rel = world - target
        along = np.clip(rel @ u, 0.0, np.linalg.norm(entry - target))
        d = np.linalg.norm(rel - along[:, None] * u, axis=1).min()
        assert d > best["min_vessel_distance_mm"] - 1.5                  # surface ~ voxel-accurate
