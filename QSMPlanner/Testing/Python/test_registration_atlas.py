"""Atlas normalisation of the template onto a posed, scaled copy: warped STN lands near the truth."""
import numpy as np

from QSMPlannerLib import ATLAS_DIR
from QSMPlannerLib.io.volumes import read_volume
from QSMPlannerLib.registration import normalize_to_mni, resample, read_transform  # noqa: F401
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix


def test_atlas_warp_recovers_stn(tmp_path):
    t1 = read_volume(ATLAS_DIR / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    lab = read_volume(ATLAS_DIR / "CIT168_subcortex.nii.gz")
    lab = lab.with_data(np.rint(lab.data).astype(np.int16))
    grid = Volume(np.zeros((80, 96, 80)), ras_from_ijk_matrix((2, 2, 2), origin=(-80, -112, -70)))
    patient_from_mni = np.eye(4)
    patient_from_mni[:3, :3] = rotation_matrix([8, 0, 5]) * 1.05
    patient_from_mni[:3, 3] = [4, -3, 2]
    patient = resample(t1, grid, patient_from_mni)
    truth = resample(lab, grid, patient_from_mni, interpolation="nearest")
    norm = normalize_to_mni(patient)
    warped = norm.warp_labels(grid)
    for value in (16, 116):
        a, b = truth.data == value, warped.data == value
        assert b.sum() > 0
        err = np.linalg.norm(grid.ijk_to_ras(np.argwhere(a).mean(0)) - grid.ijk_to_ras(np.argwhere(b).mean(0)))
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert err <= 1.0 and dice >= 0.7, (value, err, dice)  # issue targets
    p = np.array([10.0, -15.0, -8.0])
    np.testing.assert_allclose(norm.t1_to_mni(norm.mni_to_t1(p)), p, atol=0.05)
    expected = patient_from_mni[:3, :3] @ p + patient_from_mni[:3, 3]
    assert np.linalg.norm(norm.mni_to_t1(p) - expected) < 1.0
    norm.write(tmp_path / "atlas.h5")
    assert (tmp_path / "atlas.h5").stat().st_size > 1000
