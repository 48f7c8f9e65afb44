"""Transform files round trip through a slicer-core transform storage node; resampling keeps labels."""
import numpy as np
import pytest

from QSMPlannerLib.registration import read_transform, resample, write_transform
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix


def _matrix():
    m = np.eye(4)
    m[:3, :3] = rotation_matrix([20, -10, 30])
    m[:3, 3] = [5, -7, 12]
    return m


@pytest.mark.parametrize("suffix", [".h5", ".tfm", ".txt"])
def test_transform_round_trip_through_slicer_storage(tmp_path, suffix):
    slicer = pytest.importorskip("slicer")
    import vtk
    m = _matrix()
    path = tmp_path / f"t{suffix}"
    write_transform(path, m)
    assert np.allclose(read_transform(path), m, atol=1e-9)
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLTransformStorageNode()
    scene.AddNode(storage)
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    to_parent = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(to_parent)
    got = np.array([[to_parent.GetElement(i, j) for j in range(4)] for i in range(4)])
    # moving image under the node appears in the fixed space: matrix-to-parent = fixed_from_moving
    np.testing.assert_allclose(got, m, atol=1e-6)


def test_resample_nearest_keeps_labels_and_moves_correctly():
    rng = np.random.default_rng(0)
    labels = np.zeros((30, 30, 30), np.int16)
    labels[10:15, 8:20, 12:18] = 16
    labels[18:22, 5:9, 5:25] = 116
    labels[rng.random(labels.shape) > 0.995] = 7
    vol = Volume(labels, ras_from_ijk_matrix((2, 2, 2), origin=(-30, -30, -30)))
    shift = np.eye(4)
    shift[:3, 3] = [4.0, 0, 0]  # 2 voxels towards R
    out = resample(vol, vol, shift, interpolation="nearest")
    assert out.data.dtype == labels.dtype
    assert set(np.unique(out.data)) <= set(np.unique(labels))
    np.testing.assert_array_equal(out.data[12:17], labels[10:15])
