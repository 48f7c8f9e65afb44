"""MRML scene round trips on the slicer-core wheel: nodes built from QSMPlanner results, saved as a Slicer
bundle (.mrb), read into a fresh scene: same nodes, names and geometry."""
import re
import zipfile

import numpy as np
import pytest

pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from QSMPlannerLib.errors import InputError  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402
from QSMPlannerLib.volume import Volume, rotation_matrix  # noqa: E402


def _oblique(voxel=(1.0, 1.1, 1.5), angles=(10.0, -5.0, 20.0), origin=(-20.0, 10.0, 5.0)):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(angles) * np.asarray(voxel)
    m[:3, 3] = origin
    return m


@pytest.fixture(scope="module")
def results():
    """A result set: from the digital patient if it exists, else synthetic volumes (same structure)."""
    rng = np.random.default_rng(7)
    try:
        from QSMPlannerLib.phantom import make_patient
        patient = make_patient(seed=0, small=True)
        chi = patient.truth["chi_ppm"]
        labels = patient.truth["labels_gre"]
        names = {v: patient.label_names[v] for v in (16, 116, 8, 108)}
        landmarks = dict(patient.landmarks)
        t1_from_gre = np.asarray(patient.transforms["t1_from_gre"], float)
        qsm = Volume(chi.data.astype(np.float32), chi.ras_from_ijk, "QSM")
        labelmap = Volume(labels.data.astype(np.int16), labels.ras_from_ijk, "labels")
        source = "phantom"
    except ImportError:
        m = _oblique()
        qsm = Volume(rng.normal(0, 0.05, (30, 32, 20)).astype(np.float32), m, "QSM")
        lab = np.zeros(qsm.shape3, np.int16)
        lab[5:10, 5:10, 5:10] = 16
        lab[15:20, 5:10, 5:10] = 116
        lab[10:14, 20:25, 8:12] = 8
        lab[20:24, 20:25, 8:12] = 108
        labelmap = Volume(lab, m, "labels")
        names = {16: "STN_L", 116: "STN_R", 8: "RN_L", 108: "RN_R"}
        landmarks = {"AC": np.array([0.0, 1.0, 2.0]), "PC": np.array([0.0, -24.0, 0.0]),
                     "MS": np.array([0.0, -10.0, 40.0])}
        t1_from_gre = np.eye(4)
        t1_from_gre[:3, :3] = rotation_matrix([3.0, -2.0, 4.0])
        t1_from_gre[:3, 3] = [5.0, -3.0, 2.0]
        source = "synthetic"
    tube = vtk.vtkTubeFilter()
    line = vtk.vtkLineSource()
    line.SetPoint1(-30.0, 20.0, 60.0)
    line.SetPoint2(-12.0, -2.0, -4.0)
    tube.SetInputConnection(line.GetOutputPort())
    tube.SetRadius(0.635)
    tube.SetNumberOfSides(16)
    tube.Update()
    return {
        "source": source,
        "transforms": {"t1_from_gre": t1_from_gre},
        "volumes": {"QSM": qsm},
        "labelmaps": {"TruthLabels": labelmap},
        "segmentations": {"Nuclei": (labelmap, names)},
        "points": {"Landmarks": landmarks},
        "lines": {"Trajectory_L": (np.array([-30.0, 20.0, 60.0]), np.array([-12.0, -2.0, -4.0]))},
        "models": {"Electrode_L": tube.GetOutput()},
        "tables": {"Coordinates": [
            {"point": "target_L", "R": -12.0, "A": -2.0, "S": -4.0, "system": "RAS"},
            {"point": "entry_L", "R": -30.0, "A": 20.0, "S": 60.0, "system": "RAS"}]},
        "parents": {"QSM": "t1_from_gre", "Nuclei": "t1_from_gre"},
    }


def _summary(scene):
    out = {}
    for node in mrml.nodes_by_class(scene, "vtkMRMLTransformableNode"):
        parent = node.GetParentTransformNode()
        out[node.GetName()] = (node.GetClassName(), parent.GetName() if parent else None)
    return out


def test_mrb_round_trip_keeps_nodes_names_and_geometry(results, tmp_path):
    scene = mrml.build_scene(results, tmp_path / "plan.mrb")
    path = tmp_path / "plan.mrb"
    assert path.is_file()
    members = zipfile.ZipFile(path).namelist()
    assert any(n.endswith(".mrml") for n in members)
    assert any(n.endswith("Nuclei.seg.nrrd") for n in members)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"

    fresh = mrml.load_mrb(path)
    assert fresh is not scene
    assert _summary(fresh) == _summary(scene)

    qsm = results["volumes"]["QSM"]
    qsm_node = mrml.node_by_name(fresh, "QSM", "vtkMRMLScalarVolumeNode")
    np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm_node), qsm.ras_from_ijk, atol=1e-6)
    back = mrml.volume_from_node(qsm_node)
    np.testing.assert_array_equal(back.data, qsm.data)
    display = qsm_node.GetDisplayNode()
    assert display.GetWindow() == pytest.approx(0.40, abs=1e-6)
    assert display.GetLevel() == pytest.approx(0.05, abs=1e-6)
    assert display.GetColorNodeID() == "vtkMRMLColorTableNodeGrey"

    # the QSM is observed (not hardened) under t1_from_gre: own geometry kept, world matrix composed
    t = results["transforms"]["t1_from_gre"]
    np.testing.assert_allclose(mrml.transform_matrix(mrml.node_by_name(fresh, "t1_from_gre")), t, atol=1e-9)
    world = mrml.volume_from_node(qsm_node, world=True)
    np.testing.assert_allclose(world.ras_from_ijk, t @ qsm.ras_from_ijk, atol=1e-6)

    labels_node = mrml.node_by_name(fresh, "TruthLabels", "vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(mrml.volume_from_node(labels_node).data,
                                  results["labelmaps"]["TruthLabels"].data)

    labelmap, names = results["segmentations"]["Nuclei"]
    seg_node = mrml.node_by_name(fresh, "Nuclei", "vtkMRMLSegmentationNode")
    assert mrml.segment_names(seg_node) == [names[v] for v in sorted(names)]
    assert mrml.segment_label_values(seg_node) == {n: v for v, n in names.items()}
    for value, name in names.items():
        mask = mrml.segment_mask(seg_node, name, labelmap)
        np.testing.assert_array_equal(mask, labelmap.data == value)
    first = seg_node.GetSegmentation().GetNthSegment(0)
    terminology = mrml.segment_tag(first, first.GetTerminologyEntryTagName())
    assert f"CIT168^{sorted(names)[0]}^" in terminology and "Anatomical Structure" in terminology

    lm = mrml.fiducials_to_dict(mrml.node_by_name(fresh, "Landmarks"))
    assert list(lm) == list(results["points"]["Landmarks"])
    for k, v in results["points"]["Landmarks"].items():
        np.testing.assert_allclose(lm[k], v, atol=1e-6)

    line = mrml.fiducials_to_dict(mrml.node_by_name(fresh, "Trajectory_L", "vtkMRMLMarkupsLineNode"))
    entry, target = results["lines"]["Trajectory_L"]
    np.testing.assert_allclose(line["entry"], entry, atol=1e-6)
    np.testing.assert_allclose(line["target"], target, atol=1e-6)

    model = mrml.node_by_name(fresh, "Electrode_L", "vtkMRMLModelNode")
    pts = model.GetPolyData().GetNumberOfPoints()
    assert pts == results["models"]["Electrode_L"].GetNumberOfPoints()
    bounds = np.array(model.GetPolyData().GetBounds())
    np.testing.assert_allclose(bounds, results["models"]["Electrode_L"].GetBounds(), atol=1e-3)

    rows = mrml.table_to_rows(mrml.node_by_name(fresh, "Coordinates", "vtkMRMLTableNode"))
    assert [r["point"] for r in rows] == ["target_L", "entry_L"]
    assert rows[0]["R"] == pytest.approx(-12.0) and rows[1]["S"] == pytest.approx(60.0)


def test_hardening_bakes_the_transform_into_the_geometry(results):
    scene = mrml.new_scene()
    t = results["transforms"]["t1_from_gre"]
    transform = mrml.add_transform(scene, t, "t1_from_gre")
    qsm = results["volumes"]["QSM"]
    observed = mrml.add_volume(scene, qsm, "observed", kind="qsm", parent_transform=transform)
    hardened = mrml.add_volume(scene, qsm, "hardened", kind="qsm")
    mrml.set_parent_transform(hardened, transform, harden=True)
    assert observed.GetParentTransformNode() is transform
    assert hardened.GetParentTransformNode() is None
    np.testing.assert_allclose(mrml.ras_from_ijk_of(observed), qsm.ras_from_ijk, atol=1e-9)
    np.testing.assert_allclose(mrml.ras_from_ijk_of(hardened), t @ qsm.ras_from_ijk, atol=1e-6)

    points = {"AC": np.array([1.0, 2.0, 3.0])}
    fid = mrml.add_fiducials(scene, points, "P", parent_transform=transform)
    np.testing.assert_allclose(mrml.fiducials_to_dict(fid)["AC"], points["AC"])
    np.testing.assert_allclose(mrml.fiducials_to_dict(fid, world=True)["AC"],
                               t[:3, :3] @ points["AC"] + t[:3, 3], atol=1e-9)


def test_bad_bundle_paths_are_input_errors(tmp_path):
    scene = mrml.new_scene()
    with pytest.raises(InputError):
        mrml.save_mrb(scene, tmp_path / "scene.zip")
    with pytest.raises(InputError):
        mrml.load_mrb(tmp_path / "missing.mrb")


def test_build_scene_shortcuts(results):
    qsm = results["volumes"]["QSM"]
    labelmap, names = results["segmentations"]["Nuclei"]
    scene = mrml.build_scene({"qsm": qsm, "t1": qsm.with_data(qsm.data * 0 + 1.0), "segmentation": (labelmap, names),
                              "landmarks": results["points"]["Landmarks"]})
    assert mrml.node_by_name(scene, "QSM").GetDisplayNode().GetWindowLevelMax() == pytest.approx(0.25)
    assert mrml.node_by_name(scene, "T1") is not None
    assert mrml.segment_names(mrml.node_by_name(scene, "Nuclei")) == [names[v] for v in sorted(names)]
    assert list(mrml.fiducials_to_dict(mrml.node_by_name(scene, "AC-PC-MS"))) == ["AC", "PC", "MS"]


def _save_state(scene):
    """Everything a bundle save could repoint: scene URL, root directory and version, the node list, and
    each storable node's storage node, file name(s) and compression."""
    nodes = []
    for node in mrml.nodes_by_class(scene, "vtkMRMLNode"):
        storage = node.GetStorageNode() if node.IsA("vtkMRMLStorableNode") else None
        files = None
        if storage is not None:
            files = (storage.GetID(), storage.GetFileName(),
                     tuple(storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames())),
                     storage.GetUseCompression())
        nodes.append((node.GetID(), node.GetName(), files))
    return scene.GetURL(), scene.GetRootDirectory(), scene.GetVersion(), nodes


def test_saving_a_bundle_leaves_the_open_scene_unchanged(results, tmp_path):
    scene = mrml.build_scene(results)
    # the scene as it is after opening it from disk: QSM and the trajectory have files in ``opened/``
    opened = tmp_path / "opened"
    opened.mkdir()
    for name, file_name in (("QSM", "QSM.nrrd"), ("Trajectory_L", "Trajectory_L.mrk.json")):
        node = mrml.node_by_name(scene, name)
        node.AddDefaultStorageNode()
        node.GetStorageNode().SetFileName(str(opened / file_name))
        node.GetStorageNode().SetUseCompression(0)
        assert node.GetStorageNode().WriteData(node)
    scene.SetRootDirectory(str(opened))
    scene.SetURL(str(opened / "opened.mrml"))
    assert scene.Commit()
    before = _save_state(scene)
    assert sum(files is not None for _, _, files in before[3]) == 2

    mrml.save_mrb(scene, tmp_path / "first.mrb")
    assert _save_state(scene) == before
    # the open scene still points at its own files, reads them and saves again
    qsm_node = mrml.node_by_name(scene, "QSM")
    assert qsm_node.GetStorageNode().ReadData(qsm_node)
    np.testing.assert_array_equal(mrml.volume_from_node(qsm_node).data, results["volumes"]["QSM"].data)
    assert scene.Commit() and (opened / "opened.mrml").is_file()
    mrml.save_mrb(scene, tmp_path / "second.mrb")
    assert _save_state(scene) == before
    assert _summary(mrml.load_mrb(tmp_path / "second.mrb")) == _summary(scene)


def test_bundle_is_compressed_with_slicers_scene_header(results, tmp_path):
    scene = mrml.build_scene(results, tmp_path / "plan.mrb")
    archive = zipfile.ZipFile(tmp_path / "plan.mrb")
    mrml_text = archive.read("plan/plan.mrml").decode()
    header = re.search(r'<MRML\s+version="([^"]*)"', mrml_text).group(1)
    assert header == mrml.SLICER_SCENE_VERSION
    application, major, minor, patch, revision = re.fullmatch(r"(\S+) (\d+)\.(\d+)\.(\d+) (\d+)", header).groups()
    assert application == "Slicer" and (int(major), int(minor)) >= (5, 8) and int(revision) > 0
    assert mrml.load_mrb(tmp_path / "plan.mrb").GetLastLoadedVersion() == header
    assert scene.GetVersion() != header  # slicer-core's own version is left on the open scene

    for info in archive.infolist():
        if info.is_dir():
            continue
        data = archive.read(info)
        if info.filename.endswith(".nrrd"):   # volumes and segmentations: gzip NRRD, stored as they are
            assert b"\nencoding: gzip\n" in data[:2000], info.filename
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
        else:
            assert info.compress_type == zipfile.ZIP_DEFLATED, info.filename
    raw_bytes = sum(np.asarray(v.data).nbytes for v in results["volumes"].values())
    raw_bytes += sum(np.asarray(v.data).astype(np.int16).nbytes for v in results["labelmaps"].values())
    assert (tmp_path / "plan.mrb").stat().st_size < 0.5 * raw_bytes


def test_whole_number_scalar_volumes_are_held_as_int16(results):
    """A T1 or CT of whole numbers (as scanners store them) becomes an int16 node, exactly; other data keeps
    its type: fractional scalars, and the QSM (ppm) whatever its values."""
    scene = mrml.new_scene()
    qsm = results["volumes"]["QSM"]
    whole = qsm.with_data(np.round(qsm.data * 1000.0).astype(np.float32))
    node = mrml.add_volume(scene, whole, "T1")
    assert node.GetImageData().GetScalarTypeAsString() == "short"
    np.testing.assert_array_equal(mrml.volume_from_node(node).data, whole.data)
    assert mrml.add_volume(scene, qsm, "fractional").GetImageData().GetScalarTypeAsString() == "float"
    assert mrml.add_volume(scene, whole, "QSM", kind="qsm").GetImageData().GetScalarTypeAsString() == "float"
    too_big = whole.with_data(np.full(whole.shape3, 40000.0, np.float32))
    assert mrml.add_volume(scene, too_big, "bright").GetImageData().GetScalarTypeAsString() == "float"
