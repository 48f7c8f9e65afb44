"""Rigid recovery of a known 20 deg / 25 mm pose between contrast-changed template copies; failure detection."""
import numpy as np
import pytest

from QSMPlannerLib import ATLAS_DIR
from QSMPlannerLib.errors import ProcessingError
from QSMPlannerLib.io.volumes import read_volume
from QSMPlannerLib.registration import register_rigid, resample
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix


@pytest.fixture(scope="module")
def template():
    return read_volume(ATLAS_DIR / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")


def _grid():
    return Volume(np.zeros((80, 96, 80)), ras_from_ijk_matrix((2, 2, 2), origin=(-80, -112, -70)))


def test_rigid_recovers_known_pose_multimodal(template):
    fixed = resample(template, _grid())
    pose = np.eye(4)  # fixed_from_moving
    pose[:3, :3] = rotation_matrix([20.0, -8.0, 10.0])
    pose[:3, 3] = [15.0, -18.0, 10.0]
    assert np.linalg.norm(pose[:3, 3]) > 25
    moving = resample(template, _grid(), np.linalg.inv(pose))
    d = moving.data
    # GRE-like inverted, nonlinear contrast with noise
    moving = moving.with_data(np.exp(-d / 40.0) * 100 + np.random.default_rng(1).normal(0, 2, d.shape))
    result = register_rigid(fixed, moving)
    pts = fixed.voxel_ras_grid()[fixed.data > 30]
    moving_pts = pts @ np.linalg.inv(pose)[:3, :3].T + np.linalg.inv(pose)[:3, 3]
    back = moving_pts @ result.fixed_from_moving[:3, :3].T + result.fixed_from_moving[:3, 3]
    tre = np.linalg.norm(back - pts, axis=1)
    assert tre.mean() < 0.3, tre.mean()
    assert result.converged and result.metric_final < result.metric_initial
    assert abs(result.qc["angle_deg"] - np.degrees(np.arccos((np.trace(pose[:3, :3]) - 1) / 2))) < 0.5
    assert set(result.to_dict()) >= {"fixed_from_moving", "metric_initial", "metric_final", "qc"}


def test_rigid_detects_failure_on_noise(template):
    fixed = resample(template, _grid())
    rng = np.random.default_rng(3)
    noise = Volume(rng.random((40, 40, 40)) * 100, ras_from_ijk_matrix((2, 2, 2), origin=(-40, -40, -40)))
    with pytest.raises(ProcessingError) as err:
        register_rigid(fixed, noise)
    assert "metric" in str(err.value)
