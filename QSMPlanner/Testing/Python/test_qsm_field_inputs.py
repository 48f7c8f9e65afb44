"""Field-map inputs: qsmplanner qsm --local-field / --total-field / --unwrapped-phase (with --mask, B0 and
its direction), the units each takes (ppm, Hz, rad at --te), and bad inputs (exit 2 naming the problem)."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from QSMPlannerLib.cli import main
from QSMPlannerLib.io.gre import GAMMA_HZ_PER_T
from QSMPlannerLib.io.volumes import read_volume, write_volume
from QSMPlannerLib.qsm import reconstruct_from_field
from QSMPlannerLib.qsm.simulate import simulate_head
from QSMPlannerLib.volume import Volume

B0 = 3.0
HZ_PER_PPM = GAMMA_HZ_PER_T * B0 * 1e-6
DATA = Path(__file__).resolve().parents[1] / "Data" / "real-dicom"


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    sim = simulate_head(shape=(48, 48, 36), voxel_mm=(2.0, 2.0, 2.5), tilt_deg=15.0, seed=3)
    d = tmp_path_factory.mktemp("fields")
    aff = sim.gre.ras_from_ijk
    files = {}

    def save(name, data):
        files[name] = write_volume(Volume(np.asarray(data, np.float32), aff, name), d / f"{name}.nii.gz")

    save("mask", sim.brain_mask.astype(np.uint8))
    save("local_ppm", sim.local_field_ppm)
    save("local_hz", sim.local_field_ppm * HZ_PER_PPM)
    te = 0.02
    save("local_rad", sim.local_field_ppm * HZ_PER_PPM * 2 * np.pi * te)
    total_hz = np.where(sim.brain_mask, sim.total_field_ppm * HZ_PER_PPM + 40.0, 0)   # + a B0 offset
    save("total_hz", total_hz)
    tes = np.array([0.004, 0.008, 0.012])
    offset = 0.7 * np.cos(np.arange(48) / 9.0)[:, None, None]
    save("unwrapped", offset[..., None] + 2 * np.pi * total_hz[..., None] * tes)   # offset + 2 pi f TE
    save("wrapped", np.angle(np.exp(1j * (offset + 2 * np.pi * total_hz * 0.012))))
    inside = sim.local_field_ppm[sim.brain_mask]
    spread = np.percentile(np.abs(inside - np.median(inside)), 99.5)
    save("ambiguous", sim.local_field_ppm / spread * 0.7)   # a spread of 0.7: ppm, or Hz (0.0055 ppm)?
    shifted = Volume(sim.brain_mask.astype(np.uint8), aff.copy(), "m")
    shifted.ras_from_ijk[:3, 3] += 1.0
    files["mask_moved"] = write_volume(shifted, d / "mask_moved.nii.gz")
    return sim, d, files, te, tes


def _nrmse(chi, sim, m):
    return np.linalg.norm(chi[m] - sim.chi_ppm[m]) / np.linalg.norm(sim.chi_ppm[m])


def run_cli(args, capsys):
    code = main(["qsm"] + [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_local_field_in_ppm_hz_and_rad_give_the_same_chi(case, capsys):
    sim, d, f, te, _ = case
    chis = {}
    for units, extra in (("ppm", []), ("hz", ["--b0", B0]), ("rad", ["--b0", B0, "--te", te])):
        out = d / f"chi_local_{units}.nii.gz"
        code, stdout, err = run_cli(["--local-field", f[f"local_{units}"], "--field-units", units, "--mask",
                                     f["mask"], "--out", out] + extra, capsys)
        assert code == 0, err
        assert json.loads(stdout.strip().splitlines()[-1])["units"] == "ppm"
        chis[units] = read_volume(out).data
    m = (chis["ppm"] != 0) & sim.brain_mask
    assert _nrmse(chis["ppm"], sim, m) < 0.45          # the true local field: inversion alone
    for units in ("hz", "rad"):
        assert np.abs(chis[units] - chis["ppm"]).max() < 2e-3
    for name, src in sim.sources.items():               # paramagnetic sources positive
        assert chis["ppm"][src & m].mean() > 0.5 * sim.chi_ppm[src & m].mean(), name


def test_total_field_in_hz_and_unwrapped_phase(case, capsys):
    sim, d, f, _, tes = case
    out_total, out_phase = d / "chi_total.nii.gz", d / "chi_phase.nii.gz"
    code, _, err = run_cli(["--total-field", f["total_hz"], "--field-units", "hz", "--b0", B0,
                            "--mask", f["mask"], "--out", out_total], capsys)
    assert code == 0, err
    code, _, err = run_cli(["--unwrapped-phase", f["unwrapped"], "--te"] + list(tes) +
                           ["--b0", B0, "--mask", f["mask"], "--out", out_phase], capsys)
    assert code == 0, err
    chi_t, chi_p = read_volume(out_total).data, read_volume(out_phase).data
    m = (chi_t != 0) & sim.brain_mask
    assert _nrmse(chi_t, sim, m) < 0.6                  # background removed by PDF first
    assert np.abs(chi_p - chi_t)[m].max() < 0.01        # the fitted slope is the same field


def test_units_from_the_sidecar_and_the_stage_function(case, capsys, tmp_path):
    sim, d, f, _, _ = case
    hz = tmp_path / "local.nii.gz"
    hz.write_bytes(Path(f["local_hz"]).read_bytes())
    (tmp_path / "local.json").write_text(json.dumps({"Units": "Hz", "MagneticFieldStrength": B0}))
    code, _, err = run_cli(["--local-field", hz, "--mask", f["mask"], "--out", tmp_path / "c.nii.gz"], capsys)
    assert code == 0, err
    # no units and no sidecar: the values fit a local field only in ppm (resp. Hz)
    for name in ("local_ppm", "local_hz"):
        code, out, err = run_cli(["--local-field", f[name], "--b0", B0, "--mask", f["mask"], "--out",
                                  tmp_path / f"{name}.nii.gz"], capsys)
        assert code == 0 and f"only as {name[6:]}" in out, err
        assert np.abs(read_volume(tmp_path / f"{name}.nii.gz").data - read_volume(tmp_path / "c.nii.gz").data).max() < 2e-3
    # the stage function the workflow calls: same chi as the CLI from ppm
    res = reconstruct_from_field(read_volume(f["local_ppm"]), read_volume(f["mask"]), kind="local")
    assert np.abs(res.chi_ppm.data - read_volume(tmp_path / "c.nii.gz").data).max() < 2e-3


@pytest.mark.parametrize("args, problem", [
    (["--local-field", "{local_ppm}", "--field-units", "ppm", "--out", "{o}"], "needs --mask"),
    (["--local-field", "{local_hz}", "--field-units", "ppm", "--mask", "{mask}", "--out", "{o}"],
     "check --field-units"),
    (["--local-field", "{local_ppm}", "--field-units", "hz", "--mask", "{mask}", "--out", "{o}"],
     "check --field-units"),
    (["--local-field", "{ambiguous}", "--mask", "{mask}", "--out", "{o}"], "give --field-units"),
    (["--local-field", "{local_rad}", "--field-units", "rad", "--mask", "{mask}", "--out", "{o}"], "--te"),
    (["--local-field", "{local_ppm}", "--field-units", "ppm", "--mask", "{mask_moved}", "--out", "{o}"],
     "not on the same grid"),
    (["--unwrapped-phase", "{wrapped}", "--te", "0.012", "--mask", "{mask}", "--out", "{o}"], "looks wrapped"),
    (["--unwrapped-phase", "{unwrapped}", "--te", "0.004", "--mask", "{mask}", "--out", "{o}"],
     "1 echo times given for 3"),
    (["--total-field", "{total_hz}", "--local-field", "{local_ppm}", "--mask", "{mask}", "--out", "{o}"],
     "give one of"),
    (["--total-field", "{total_hz}", "--field-units", "hz", "--mag", "{mask}", "--mask", "{mask}",
      "--out", "{o}"], "replaces --bids"),
])
def test_bad_field_inputs_exit_2_naming_the_problem(case, capsys, args, problem, tmp_path):
    sim, d, f, _, _ = case
    names = {k: str(v) for k, v in f.items()} | {"o": str(tmp_path / "never.nii.gz")}
    code, _, err = run_cli([a.format(**names) for a in args], capsys)
    assert code == 2 and problem in err and "Traceback" not in err
    assert not (tmp_path / "never.nii.gz").exists()


def test_scanner_b0_map_from_ge_dicom_as_total_field(tmp_path, capsys):
    """A real GE B0 map series (Hz, through dcm2niix) with a mask from its magnitude."""
    from QSMPlannerLib.io import dcm2niix
    images = {im.part: im for im in dcm2niix.convert(DATA / "GE")}
    mag = images["magnitude"].volume
    mask = (mag.data > 0.25 * np.percentile(mag.data, 99)).astype(np.uint8)
    write_volume(mag.with_data(mask), tmp_path / "mask.nii.gz")
    code, out, err = run_cli(["--total-field", DATA / "GE", "--mask", tmp_path / "mask.nii.gz",
                              "--bfr", "vsharp", "--inversion", "tkd", "--out", tmp_path / "chi.nii.gz"], capsys)
    assert code == 0, err
    assert "total field read as hz at 3 T" in out
    chi = nib.load(str(tmp_path / "chi.nii.gz"))
    assert chi.shape == mag.shape3 and np.allclose(chi.affine, mag.ras_from_ijk, atol=1e-4)
    assert np.isfinite(chi.get_fdata()).all() and np.abs(chi.get_fdata()).max() > 0
