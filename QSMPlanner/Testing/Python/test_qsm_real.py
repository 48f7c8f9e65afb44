"""Real 3-echo GRE crop (ROMEO.jl test data): exact unwrapping agrees with scikit-image's up to a
global 2*pi*k, no added 2*pi jumps; the pipeline and the CLI run on it."""

import numpy as np
import pytest
from skimage.restoration import unwrap_phase

from QSMPlannerLib.cli import main
from QSMPlannerLib.io import load_gre
from QSMPlannerLib.qsm import reconstruct_qsm
from QSMPlannerLib.qsm.echo import combine_echoes
from QSMPlannerLib.qsm.mask import brain_mask
from QSMPlannerLib.qsm.romeo import quality_unwrap

TE = [4e-3, 8e-3, 12e-3]


@pytest.fixture(scope="module")
def real_gre(real_phase_dir):
    return load_gre(mag=[real_phase_dir / "small_Mag.nii"], phase=[real_phase_dir / "small_Phase.nii"],
                    te=TE, b0=3.0)


def _jumps(u, m):
    n = 0
    for a in range(3):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[a], lo[a] = slice(1, None), slice(None, -1)
        both = m[tuple(hi)] & m[tuple(lo)]
        n += int((np.abs(u[tuple(hi)] - u[tuple(lo)])[both] > np.pi).sum())
    return n


def _agreement(u, s, m):
    k = (u - s)[m] / (2 * np.pi)
    return float(np.mean(np.abs(k - np.round(np.median(k))) < 1e-3))


def test_quality_unwrap_agrees_with_skimage_on_real_echoes(real_gre):
    m = brain_mask(real_gre.rss_magnitude().data, real_gre.voxel_mm)
    assert m.mean() > 0.8  # the crop is all brain: the mask must not split tissue classes
    for e in range(2):
        p = real_gre.phase_rad[..., e]
        u = quality_unwrap(p, real_gre.magnitude[..., e], m)
        s = unwrap_phase(np.ma.array(p, mask=~m)).filled(0)
        assert _jumps(p, m) > 100  # there was wrapping to undo
        assert _agreement(u, s, m) > 0.9999
        assert _jumps(u, m) <= max(1, _jumps(s, m))


def test_echo_combination_unwraps_every_echo_exactly(real_gre):
    m = brain_mask(real_gre.rss_magnitude().data, real_gre.voxel_mm)
    fit = combine_echoes(real_gre.magnitude, real_gre.phase_rad, real_gre.te_s, m, real_gre.voxel_mm)
    for e in range(3):  # offset-free unwrapped echo = wrapped echo - offset + 2*pi*n
        d = (fit.unwrapped_rad[..., e] - real_gre.phase_rad[..., e] + fit.phase_offset_rad)[m]
        k = d / (2 * np.pi)
        assert np.allclose(k, np.round(k), atol=1e-3)
    good = m & (fit.residual_rad < 0.3)
    assert good.sum() > 0.95 * m.sum()  # a linear phase evolution fits almost everywhere
    hz = fit.field_hz[m]
    assert np.all(np.isfinite(hz)) and np.percentile(np.abs(hz - np.median(hz)), 99) < 150


def test_pipeline_and_cli_on_real_crop(real_gre, real_phase_dir, tmp_path):
    res = reconstruct_qsm(real_gre, inversion="tkd")
    chi = res.chi_ppm.data[res.mask.data > 0]
    assert res.mask.data.sum() > 20000 and np.all(np.isfinite(chi))
    assert 0.02 < np.std(chi) < 0.2  # ppm: tissue contrast, not noise blow-up
    out = tmp_path / "qsm.nii.gz"
    keep = tmp_path / "keep"
    rc = main(["qsm", "--mag", str(real_phase_dir / "small_Mag.nii"), "--phase",
               str(real_phase_dir / "small_Phase.nii"), "--te", *map(str, TE), "--b0", "3",
               "--inversion", "tkd", "--keep-intermediates", str(keep), "--out", str(out)])
    assert rc == 0 and out.exists() and (keep / "total_field_hz.nii.gz").exists()
    import nibabel as nib
    img = nib.load(str(out))
    assert np.allclose(img.affine, real_gre.ras_from_ijk, atol=1e-4)
    assert np.allclose(np.asarray(img.dataobj), res.chi_ppm.data, atol=1e-5)


def test_cli_rejects_decreasing_echo_times(real_phase_dir, tmp_path, capsys):
    rc = main(["qsm", "--mag", str(real_phase_dir / "small_Mag.nii"), "--phase",
               str(real_phase_dir / "small_Phase.nii"), "--te", "0.012", "0.008", "0.004",
               "--out", str(tmp_path / "q.nii.gz")])
    assert rc == 2 and "increasing" in capsys.readouterr().err
    assert not (tmp_path / "q.nii.gz").exists()
