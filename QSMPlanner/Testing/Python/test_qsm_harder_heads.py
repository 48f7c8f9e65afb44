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
