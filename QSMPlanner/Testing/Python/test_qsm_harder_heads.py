"""Harder digital heads (phantom.patient.HeadVariation): each departure changes what it says and nothing
else; the default variation is the default patient."""
import numpy as np
import pytest

from QSMPlannerLib.phantom import make_patient
from QSMPlannerLib.phantom.patient import HeadVariation


@pytest.fixture(scope="module")
def heads():
    base = make_patient(seed=5, small=True)
    varied = make_patient(seed=5, small=True, variation=HeadVariation(
        "hard", chi_scale_nuclei=1.5, chi_wm_ppm=-0.05, extra_cortical_veins=4, ear_canals=True,
        coil_combination="phase-of-sum", chi_texture_ppm=0.02))
    return base, varied


def test_default_variation_is_the_default_patient(heads):
    base, _ = heads
    same = make_patient(seed=5, small=True, variation=HeadVariation())
    assert np.array_equal(same.gre.phase_rad, base.gre.phase_rad)
    assert np.array_equal(same.truth["chi_ppm"].data, base.truth["chi_ppm"].data)


def test_each_departure_shows_in_the_truth_and_the_signal(heads):
    base, varied = heads
    lab, m = base.truth["labels_gre"].data, base.truth["brain_mask"].data > 0
    chi_b, chi_v = base.truth["chi_ppm"].data, varied.truth["chi_ppm"].data
    gp = np.isin(lab, (5, 6, 105, 106)) & np.isin(varied.truth["labels_gre"].data, (5, 6, 105, 106)) & m
    assert chi_v[gp].mean() == pytest.approx(1.5 * chi_b[gp].mean(), rel=0.05)
    wm = (lab == 203) & (varied.truth["labels_gre"].data == 203) & m
    assert chi_v[wm].mean() - chi_b[wm].mean() == pytest.approx(-0.02, abs=0.004)
    # fine texture: WM chi spread grows by about the texture SD (in quadrature)
    assert np.sqrt(chi_v[wm].var() - chi_b[wm].var()) == pytest.approx(0.02, rel=0.35)
    veins_b = (lab == 210).sum()
    veins_v = (varied.truth["labels_gre"].data == 210).sum()
    assert veins_v > 1.1 * veins_b                                   # denser venous tree
    # ear canals: more air next to the temporal lobes -> a larger background field in the brain
    tb, tv = base.truth["total_field_ppm"].data, varied.truth["total_field_ppm"].data
    assert np.percentile(np.abs(tv[m]), 99) > np.percentile(np.abs(tb[m]), 99)
    # phase of the coil sum: an echo-independent offset, same in every echo
    d1 = np.angle(np.exp(1j * (varied.gre.phase_rad[..., 0] - base.gre.phase_rad[..., 0])))[m]
    assert d1.std() > 0.3
    assert np.array_equal(varied.truth["brain_mask"].data, base.truth["brain_mask"].data)


def test_dropouts_deep_in_the_head_rejoin_the_mask():
    """A notch of low (but measurable) signal cut from the surface to the centre of a ball comes back
    in its deep part; the ball without a notch, and a notch of pure noise, are left as they are."""
    from QSMPlannerLib.qsm.mask import extend_into_dropouts
    vox = (2.0, 2.0, 2.0)
    g = (np.indices((48, 48, 48)) - 23.5) * 2.0
    r = np.sqrt((g ** 2).sum(0))
    ball = r < 40
    notch = ball & (np.abs(g[0]) < 6) & (g[1] > 0)          # a 12 mm slot from the centre to the top
    mag = np.where(ball, 100.0, 1.0).astype(np.float32)
    mag[notch] = 20.0                                        # 20 x the noise: phase still measurable
    out = extend_into_dropouts(ball & ~notch, mag, 1.0, vox)
    deep_notch = notch & (r < 40 - 12)
    assert out[deep_notch].mean() > 0.95
    assert not (out & ~ball).any()
    assert np.array_equal(extend_into_dropouts(ball, mag, 1.0, vox), ball)
    mag[notch] = 2.0                                         # noise only: stays out
    assert not extend_into_dropouts(ball & ~notch, mag, 1.0, vox)[notch].any()


def test_reliable_field_leaves_out_the_noisiest_voxels():
    from QSMPlannerLib.qsm.mask import reliable_field
    mask = np.ones((10, 10, 10), bool)
    noise = np.full(mask.shape, 0.1, np.float32)
    noise[0, :, :] = 0.6            # 6 x the median: out
    noise[1, :, :] = 0.4            # 4 x: kept
    rel = reliable_field(noise, mask)
    assert not rel[0].any() and rel[1:].all()
    assert not reliable_field(noise, np.zeros_like(mask)).any()


def test_coil_sum_dropouts_no_longer_cut_the_deep_nuclei_out():
    """Magnitude and phase of a plain 8-coil sum (signal dropouts inside the brain, seed 2, 2 mm): the
    magnitude mask alone lost ~6 % of the brain next to the globus pallidus and its chi came out
    0.07-0.10 ppm low; the mask grown into the deep dropouts keeps it."""
    from QSMPlannerLib.qsm import reconstruct_qsm
    p = make_patient(seed=2, small=True, variation=HeadVariation("coil-sum", coil_combination="sum"))
    res = reconstruct_qsm(p.gre)
    truth_mask = p.truth["brain_mask"].data > 0
    assert (res.brain_mask.data[truth_mask] > 0).mean() > 0.97      # 0.94 from the magnitude alone
    lab = p.truth["labels_gre"].data
    chi, tru = res.chi_ppm.data, p.truth["chi_ppm"].data
    rec = np.where(truth_mask, chi - chi[truth_mask].mean(), 0)
    ref = np.where(truth_mask, tru - tru[truth_mask].mean(), 0)
    for side in ((5, 6), (105, 106)):
        gp = np.isin(lab, side) & truth_mask
        assert abs(rec[gp].mean() - ref[gp].mean()) < 0.065
