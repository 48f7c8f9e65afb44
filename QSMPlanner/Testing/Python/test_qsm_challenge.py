"""The 2016 challenge evaluation (qsm.challenge): the metric on a worked example, the file reader (.mat
and NIfTI, missing files), and the whole evaluation on a small simulated head in the challenge layout."""
import nibabel as nib
import numpy as np
import pytest
from scipy.io import savemat

from QSMPlannerLib.errors import InputError
from QSMPlannerLib.qsm import inversion, reconstruct_from_field
from QSMPlannerLib.qsm.challenge import (TKD_CHALLENGE_THRESHOLD, challenge_rmse, parse_regions, read_challenge,
                                         region_means)
from QSMPlannerLib.qsm.simulate import simulate_head
from QSMPlannerLib.volume import Volume


def test_rmse_is_the_challenge_formula_without_demeaning():
    chi, ref = np.array([1.0, 2.0, 5.0]), np.array([2.0, 2.0, 9.0])
    mask = np.array([True, True, False])
    assert challenge_rmse(chi, ref, mask) == pytest.approx(100 * 1 / np.sqrt(8))
    # an offset counts (no demeaning)
    assert challenge_rmse(ref + 0.5, ref, np.ones(3, bool)) > 0
    means = region_means(np.array([1.0, 3.0, 5.0, 7.0]), np.ones(4, bool), np.array([0, 1, 1, 2]), {"A": (1,), "B": (2, 9)})
    assert means == {"A": pytest.approx(4.0 - 4.0), "B": pytest.approx(7.0 - 4.0)}
    assert parse_regions("GP=5+6, RN=8") == {"GP": (5, 6), "RN": (8,)}
    with pytest.raises(InputError):
        parse_regions("GP=x")


def _layout(tmp_path, fmt):
    sim = simulate_head(shape=(40, 40, 32), voxel_mm=(2.0, 2.0, 2.0), seed=4)
    arrays = {"phs_tissue": sim.local_field_ppm, "msk": sim.brain_mask.astype(np.uint8), "chi_33": sim.chi_ppm,
              "chi_cosmos": sim.chi_ppm,
              "evaluation_mask": sum((i + 1) * s.astype(np.int16) for i, s in enumerate(sim.sources.values()))}
    for name, a in arrays.items():
        if fmt == "mat":
            savemat(str(tmp_path / f"{name}.mat"), {name: np.asarray(a)})
        else:
            nib.save(nib.Nifti1Image(np.asarray(a), np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / f"{name}.nii.gz"))
    return sim


@pytest.mark.parametrize("fmt", ["mat", "nii"])
def test_reader_and_evaluation_on_a_simulated_head(tmp_path, fmt):
    sim = _layout(tmp_path, fmt)
    data = read_challenge(tmp_path, voxel_mm=(2.0, 2.0, 2.0) if fmt == "mat" else None)
    assert np.allclose(data.voxel_mm, 2.0) and np.array_equal(data.mask, sim.brain_mask)
    assert np.allclose(data.local_field_ppm, sim.local_field_ppm)
    tkd = inversion.tkd(data.local_field_ppm, data.mask, data.voxel_mm, (0, 0, 1), threshold=TKD_CHALLENGE_THRESHOLD)
    field = Volume(data.local_field_ppm, data.ras_from_ijk, "f")
    mask = Volume(data.mask.astype(np.uint8), data.ras_from_ijk, "m")
    ours, one_pass = (reconstruct_from_field(field, mask, kind="local", bfr_passes=n).chi_ppm.data for n in (2, 1))
    r_tkd, r_ours, r_one = (challenge_rmse(c, data.chi_33, data.mask) for c in (tkd, ours, one_pass))
    # the target's form (<= 0.8 x TKD 0.19); measured 14.4 vs 40.1 %, one TV pass without the Bregman step 24.8
    assert r_ours < 0.5 * r_tkd and r_ours < 0.75 * r_one
    regions = {name: (i + 1,) for i, name in enumerate(sim.sources)}
    truth = region_means(data.chi_33, data.mask, data.labels, regions)
    err = {k: v - truth[k] for k, v in region_means(ours, data.mask, data.labels, regions).items()}
    assert max(abs(e) for e in err.values()) < 0.03   # measured <= 0.006 ppm (one pass: 0.042)


def test_missing_or_unreadable_challenge_files(tmp_path):
    with pytest.raises(InputError, match="phs_tissue"):
        read_challenge(tmp_path)
    _layout(tmp_path, "nii")
    (tmp_path / "chi_cosmos.nii.gz").unlink()
    with pytest.raises(InputError, match="chi_cosmos"):
        read_challenge(tmp_path)
