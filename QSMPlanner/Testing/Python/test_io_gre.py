"""Multi-echo GRE loading: BIDS, per-echo NIfTI + TEs, 4-D NIfTI + TEs; phase scaling; B0 direction."""
import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from QSMPlannerLib import io
from QSMPlannerLib.errors import InputError
from QSMPlannerLib.io.gre import MultiEchoGRE, b0_dir_from_geometry
from QSMPlannerLib.io.phase import detect_phase_scaling, wrap
from QSMPlannerLib.volume import ras_from_ijk_matrix, rotation_matrix

TE = (0.004, 0.009, 0.014)


def synthetic_gre(rng, shape=(12, 10, 8), te=TE, tilt=(12.0, -8.0, 20.0), b0=3.0):
    """A small oblique GRE with a known field: phase = wrap(phi0 + 2pi*f*TE), f up to ~100 Hz."""
    m = ras_from_ijk_matrix([0.9, 1.0, 1.4], rotation_matrix(tilt), origin=[-10.0, 20.5, -33.25])
    te = np.asarray(te, float)
    f_hz = rng.normal(0.0, 40.0, size=shape)
    phi0 = rng.uniform(-1.0, 1.0, size=shape)
    phase = wrap(phi0[..., None] + 2 * np.pi * f_hz[..., None] * te)
    mag = 100.0 * np.exp(-te / 0.04) * rng.uniform(0.5, 1.5, size=shape)[..., None]
    return MultiEchoGRE(mag.astype(np.float32), phase.astype(np.float32), te, b0, m,
                        b0_dir_from_geometry(m), "radians", "synthetic")


def save(path, data, affine):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))
    return path


def phase_error(a, b):
    """Largest circular difference between two phase arrays (radians)."""
    return float(np.abs(wrap(np.asarray(a, float) - np.asarray(b, float))).max())


def test_bids_round_trip_keeps_everything(tmp_path, rng):
    gre = synthetic_gre(rng, b0=7.0)
    io.write_gre_bids(gre, tmp_path, "01")
    for where in (tmp_path, tmp_path / "sub-01", tmp_path / "sub-01" / "anat"):
        back = io.load_gre(bids=where)
        assert back.n_echoes == 3 and back.shape3 == gre.shape3
        assert np.allclose(back.ras_from_ijk, gre.ras_from_ijk, atol=1e-4)
        assert np.allclose(back.te_s, gre.te_s) and back.b0_tesla == pytest.approx(7.0)
        assert np.allclose(back.magnitude, gre.magnitude, rtol=1e-6)
        assert phase_error(back.phase_rad, gre.phase_rad) < 1e-5
        assert back.phase_rad.min() >= -np.pi and back.phase_rad.max() < np.pi
        assert np.allclose(back.b0_dir_ijk, gre.b0_dir_ijk, atol=1e-6)
        assert back.phase_scaling.startswith("radians") and back.warnings == []


def test_bids_subject_choice(tmp_path, rng):
    io.write_gre_bids(synthetic_gre(rng, b0=3.0), tmp_path, "a")
    io.write_gre_bids(synthetic_gre(rng, b0=1.5), tmp_path, "b")
    with pytest.raises(InputError, match="several multi-echo GRE"):
        io.load_gre(bids=tmp_path)
    assert io.load_gre(bids=tmp_path, subject="b").b0_tesla == pytest.approx(1.5)
    assert io.load_gre(bids=tmp_path, subject="sub-a").b0_tesla == pytest.approx(3.0)


def test_separate_nifti_files_siemens_4096_scaling(tmp_path, rng):
    gre = synthetic_gre(rng)
    stored = np.round(gre.phase_rad * 4096 / np.pi).astype(np.int16)   # [-4096, 4095]
    stored[0, 0, 0, :] = [-4096, 4095, 0]
    mags = [save(tmp_path / f"mag{e}.nii", gre.magnitude[..., e], gre.ras_from_ijk) for e in range(3)]
    phs = [save(tmp_path / f"ph{e}.nii", stored[..., e], gre.ras_from_ijk) for e in range(3)]
    back = io.load_gre(mag=mags, phase=phs, te=list(TE), b0=3.0)
    assert "[-4096, 4095]" in back.phase_scaling
    expected = gre.phase_rad.copy()
    expected[0, 0, 0, :] = [-np.pi, np.pi * 4095 / 4096, 0]
    assert phase_error(back.phase_rad, expected) < np.pi / 4096 + 1e-6
    assert np.allclose(back.ras_from_ijk, gre.ras_from_ijk, atol=1e-5)


def test_4d_nifti_unsigned_4095_scaling_and_mrad(tmp_path, rng):
    gre = synthetic_gre(rng)
    mag4 = save(tmp_path / "mag.nii.gz", gre.magnitude, gre.ras_from_ijk)
    # 12-bit stored values: phase = stored * 2pi/4096 - pi
    stored = np.mod(np.round((gre.phase_rad + np.pi) * 4096 / (2 * np.pi)), 4096).astype(np.uint16)
    stored[0, 0, 0, 0], stored[0, 0, 1, 0] = 0, 4095
    ph4 = save(tmp_path / "phase.nii.gz", stored, gre.ras_from_ijk)
    back = io.load_gre(mag=[mag4], phase=[ph4], te=TE)
    assert "[0, 4095]" in back.phase_scaling
    exp = gre.phase_rad.copy()
    exp[0, 0, 0, 0], exp[0, 0, 1, 0] = -np.pi, np.pi - 2 * np.pi / 4096
    assert phase_error(back.phase_rad, exp) < np.pi / 4096 + 1e-6
    assert back.n_echoes == 3 and np.allclose(back.te_s, TE)
    assert any("assuming 3.0 T" in w for w in back.warnings) and back.b0_tesla == 3.0
    # mrad, float
    save(tmp_path / "mrad.nii.gz", (gre.phase_rad * 1000.0).astype(np.float32), gre.ras_from_ijk)
    back = io.load_gre(mag=[mag4], phase=[tmp_path / "mrad.nii.gz"], te=TE, b0=3.0)
    assert "mrad" in back.phase_scaling
    assert phase_error(back.phase_rad, gre.phase_rad) < 1e-5


def test_real_crop_phase_is_detected_and_rescaled(real_phase_dir):
    te = [0.004, 0.008, 0.012]
    gre = io.load_gre(mag=[real_phase_dir / "small_Mag.nii"], phase=[real_phase_dir / "small_Phase.nii"],
                      te=te, b0=3.0)
    assert gre.shape3 == (51, 51, 41) and gre.n_echoes == 3
    assert gre.phase_scaling.startswith("unrecognised range") and "rescaled" in gre.phase_scaling
    lo, hi = gre.phase_rad.min(), gre.phase_rad.max()
    step = 2 * np.pi / 4096
    assert lo == pytest.approx(-np.pi, abs=1e-5) and hi == pytest.approx(np.pi - step, abs=1e-4)
    levels = np.unique(gre.phase_rad)
    assert len(levels) == 4096 and np.allclose(np.diff(levels), step, rtol=1e-3)
    # physics check: with equally spaced TEs the echo phase advances evenly in reliable voxels, so the
    # second difference exp(i(p3 - 2 p2 + p1)) is near 0 there. A wrong scale factor breaks that.
    strong = gre.magnitude[..., 0] > np.percentile(gre.magnitude[..., 0], 60)

    def second_difference(p):
        z = np.exp(1j * p)
        return np.abs(np.angle(z[..., 2] * z[..., 0] * np.conj(z[..., 1]) ** 2))[strong]

    good = np.mean(second_difference(gre.phase_rad.astype(float)))
    assert good < 0.15
    for wrong_factor in (0.8, 1.25, 2.0):
        assert np.mean(second_difference(gre.phase_rad.astype(float) * wrong_factor)) > 1.8 * good
    assert np.allclose(gre.ras_from_ijk[:3, 3], [-104.53125, -104.53125, -55.0])


def test_b0_direction_from_oblique_geometry_and_override(tmp_path, rng):
    tilt = rotation_matrix([25.0, 0.0, 0.0])  # rotated about R: B0 leaves the k axis
    gre = synthetic_gre(rng, tilt=(25.0, 0.0, 0.0))
    mag4 = save(tmp_path / "mag.nii", gre.magnitude, gre.ras_from_ijk)
    ph4 = save(tmp_path / "ph.nii", gre.phase_rad, gre.ras_from_ijk)
    back = io.load_gre(mag=mag4, phase=ph4, te=TE, b0=3.0)
    assert np.allclose(back.b0_dir_ijk, tilt.T @ [0, 0, 1], atol=1e-5)
    assert np.allclose(back.b0_dir_ijk, [0, np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))], atol=1e-5)
    assert "image direction matrix" in back.phase_scaling
    over = io.load_gre(mag=mag4, phase=ph4, te=TE, b0=3.0, b0_dir=(0.0, 0.0, 2.0))
    assert np.allclose(over.b0_dir_ijk, [0, 0, 1])
    # the direction stored by write_gre_bids is read back (e.g. a tilted-B0 phantom on an axial grid)
    gre.b0_dir_ijk = np.array([0.0, 0.6, 0.8])
    io.write_gre_bids(gre, tmp_path / "bids", "t")
    assert np.allclose(io.load_gre(bids=tmp_path / "bids").b0_dir_ijk, [0, 0.6, 0.8])
    assert np.allclose(io.load_gre(bids=tmp_path / "bids", b0_dir=(1, 0, 0)).b0_dir_ijk, [1, 0, 0])


def test_single_echo_works_with_warning(tmp_path, rng):
    gre = synthetic_gre(rng, te=(0.02,))
    mag = save(tmp_path / "m.nii.gz", gre.magnitude[..., 0], gre.ras_from_ijk)
    ph = save(tmp_path / "p.nii.gz", gre.phase_rad[..., 0], gre.ras_from_ijk)
    back = io.load_gre(mag=[mag], phase=[ph], te=[0.02], b0=3.0)
    assert back.n_echoes == 1 and back.magnitude.shape == gre.shape3 + (1,)
    assert any("single echo" in w for w in back.warnings)


def test_sidecar_te_and_ge_sign(tmp_path, rng):
    gre = synthetic_gre(rng)
    out = io.write_gre_bids(gre, tmp_path, "ge")
    for f in out["phase"] + out["mag"]:
        side = f.with_name(f.name.replace(".nii.gz", ".json"))
        doc = json.loads(side.read_text())
        doc["Manufacturer"] = "GE"
        side.write_text(json.dumps(doc))
    back = io.load_gre(bids=tmp_path)
    assert "GE phase sign flipped" in back.phase_scaling
    assert phase_error(back.phase_rad, -gre.phase_rad) < 1e-5
    assert back.phase_rad.max() < np.pi
    # files given one by one still pick up TE and B0 from their sidecars
    back = io.load_gre(mag=out["mag"], phase=out["phase"])
    assert np.allclose(back.te_s, TE)


def test_cli_arguments(tmp_path, rng):
    gre = synthetic_gre(rng)
    io.write_gre_bids(gre, tmp_path, "c")
    parser = argparse.ArgumentParser()
    io.add_gre_arguments(parser)
    args = parser.parse_args(["--bids", str(tmp_path), "--b0", "7", "--b0-dir", "0,1,1"])
    back = io.gre_from_args(args)
    assert back.b0_tesla == 7.0 and np.allclose(back.b0_dir_ijk, [0, 2 ** -0.5, 2 ** -0.5])
    out = sorted((tmp_path / "sub-c" / "anat").glob("*.nii.gz"))
    mags = [str(p) for p in out if "part-mag" in p.name]
    phs = [str(p) for p in out if "part-phase" in p.name]
    args = parser.parse_args(["--mag", *mags, "--phase", *phs, "--te", "0.004", "0.009", "0.014"])
    assert np.allclose(io.gre_from_args(args).te_s, TE)
    with pytest.raises(InputError, match="no GRE input"):
        io.gre_from_args(parser.parse_args([]))


@pytest.mark.parametrize("kind,make,expect", [
    ("radians", lambda p: p, "radians"),
    ("0..2pi", lambda p: np.mod(p, 2 * np.pi), "radians 0..2pi"),
    ("symmetric float", lambda p: p * 0.01, "rescaled"),
    ("from zero float", lambda p: (p + np.pi) * 50.0, "rescaled"),
])
def test_scaling_detection_kinds(rng, kind, make, expect):
    phase = rng.uniform(-np.pi, np.pi, size=(20, 20, 20))
    s = detect_phase_scaling([make(phase)])
    assert s.kind == expect
    back = s.apply(make(phase))
    if expect == "rescaled":  # a constant offset is allowed: compare differences to a reference voxel
        back = back - back.flat[0] + phase.flat[0]
    assert phase_error(back, phase) < 2e-3


def test_sidecar_units_rad_keeps_a_small_symmetric_phase(tmp_path, rng):
    """A radian phase that spans only [-1, 1] evenly would look like an unknown range to rescale;
    the sidecar's Units "rad" written by write_gre_bids keeps it as is."""
    gre = synthetic_gre(rng)
    gre.phase_rad = rng.uniform(-1.0, 1.0, gre.phase_rad.shape).astype(np.float32)
    out = io.write_gre_bids(gre, tmp_path, "u")
    back = io.load_gre(bids=tmp_path)
    assert back.phase_scaling.startswith("radians")
    assert phase_error(back.phase_rad, gre.phase_rad) < 1e-6
    # without the sidecars the same files are (reasonably) taken as a rescaled range
    side = [p.with_name(p.name.replace(".nii.gz", ".json")) for p in out["phase"]]
    for p in side:
        doc = json.loads(p.read_text())
        del doc["Units"]
        p.write_text(json.dumps(doc))
    assert "rescaled" in io.load_gre(bids=tmp_path).phase_scaling


def test_write_gre_bids_refuses_inconsistent_arrays(tmp_path, rng):
    gre = synthetic_gre(rng)
    gre.te_s = gre.te_s[:2]
    with pytest.raises(ValueError, match="do not describe"):
        io.write_gre_bids(gre, tmp_path, "bad")
    assert not any(tmp_path.iterdir())


def test_float32_phase_stays_inside_minus_pi_pi(tmp_path, rng):
    """Values at +-pi and just below pi (which round to float32(pi) > pi) end inside [-pi, pi)."""
    gre = synthetic_gre(rng)
    edge = np.array([np.pi, -np.pi, np.pi - 1e-8, np.float32(np.pi), np.float32(-np.pi)])
    gre.phase_rad[0, 0, 0, :3] = edge[:3]
    gre.phase_rad[0, 0, 1, :2] = edge[3:]
    out = io.write_gre_bids(gre, tmp_path, "e")
    back = io.load_gre(bids=tmp_path)
    assert back.phase_rad.dtype == np.float32
    assert back.phase_rad.min() >= -np.pi and back.phase_rad.max() < np.pi
    assert phase_error(back.phase_rad, gre.phase_rad) < 1e-6
    for f in out["phase"]:   # the GE flip of the same data too
        side = f.with_name(f.name.replace(".nii.gz", ".json"))
        side.write_text(side.read_text().replace('"EchoTime"', '"Manufacturer": "GE", "EchoTime"'))
    ge = io.load_gre(bids=tmp_path)
    assert ge.phase_rad.min() >= -np.pi and ge.phase_rad.max() < np.pi
    assert phase_error(ge.phase_rad, -gre.phase_rad) < 1e-6


def test_dcm2niix_style_folder(tmp_path, rng):
    """A converter's output folder: GRE_5_e1.nii (magnitude), GRE_6_e1_ph.nii (phase), sidecars,
    and an unrelated T1 beside them."""
    gre = synthetic_gre(rng)
    stored = np.round(gre.phase_rad * 4096 / np.pi).clip(-4096, 4094).astype(np.float32)
    for e, te in enumerate(TE):
        common = {"EchoTime": te, "EchoNumber": e + 1, "ProtocolName": "gre_qsm", "Manufacturer": "Siemens",
                  "MagneticFieldStrength": 2.89}
        save(tmp_path / f"GRE_5_e{e + 1}.nii", gre.magnitude[..., e], gre.ras_from_ijk)
        (tmp_path / f"GRE_5_e{e + 1}.json").write_text(json.dumps({**common, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]}))
        save(tmp_path / f"GRE_6_e{e + 1}_ph.nii", stored[..., e], gre.ras_from_ijk)
        (tmp_path / f"GRE_6_e{e + 1}_ph.json").write_text(json.dumps({**common, "ImageType": ["ORIGINAL", "PRIMARY", "P", "ND"]}))
    save(tmp_path / "T1_MPRAGE_2.nii", gre.magnitude[..., 0], gre.ras_from_ijk)
    (tmp_path / "T1_MPRAGE_2.json").write_text(json.dumps({"EchoTime": 0.0023, "ProtocolName": "t1"}))
    back = io.load_gre(bids=tmp_path)
    assert back.n_echoes == 3 and np.allclose(back.te_s, TE) and back.b0_tesla == pytest.approx(2.89)
    assert "[-4096, 4095]" in back.phase_scaling
    assert phase_error(back.phase_rad, gre.phase_rad) < np.pi / 4096 + 1e-6
    # no sidecars: names decide, TEs must be given
    for p in tmp_path.glob("*.json"):
        p.unlink()
    with pytest.raises(InputError, match="echo times are missing"):
        io.load_gre(bids=tmp_path, b0=3)
    assert np.allclose(io.load_gre(bids=tmp_path, te=TE, b0=3).te_s, TE)
