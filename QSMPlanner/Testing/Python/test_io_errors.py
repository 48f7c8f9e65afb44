"""Every bad multi-echo GRE input raises InputError naming the file and the problem; inputs untouched."""
import hashlib

import nibabel as nib
import numpy as np
import pytest

from QSMPlannerLib import io
from QSMPlannerLib.errors import InputError
from QSMPlannerLib.io.phase import wrap
from QSMPlannerLib.volume import ras_from_ijk_matrix, rotation_matrix

TE = [0.004, 0.009, 0.014]
SHAPE = (10, 9, 8)


def save(path, data, affine):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_sform(affine, 1)
    img.set_qform(affine, 1)
    nib.save(img, str(path))
    return path


@pytest.fixture
def echoes(tmp_path, rng):
    """Three good magnitude and phase echo files on one oblique grid."""
    affine = ras_from_ijk_matrix([1.0, 1.0, 1.5], rotation_matrix([10, 5, -15]), [-5, 3, 7])
    field = rng.normal(0, 40, size=SHAPE)
    mags, phases = [], []
    for e, te in enumerate(TE):
        mags.append(save(tmp_path / f"mag{e + 1}.nii", rng.uniform(50, 100, SHAPE).astype(np.float32), affine))
        phases.append(save(tmp_path / f"phase{e + 1}.nii",
                           wrap(2 * np.pi * field * te).astype(np.float32), affine))
    return {"mag": mags, "phase": phases, "affine": affine, "dir": tmp_path}


def fails(match, path_name, **kw):
    with pytest.raises(InputError, match=match) as err:
        io.load_gre(**kw)
    if path_name is not None:
        assert err.value.path is not None and path_name in err.value.path, str(err.value)
        assert path_name in str(err.value)
    return err.value


def test_good_input_loads(echoes):
    gre = io.load_gre(mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    assert gre.n_echoes == 3 and gre.warnings == []


def test_mismatched_shape_between_echoes(echoes, rng):
    save(echoes["phase"][1], rng.uniform(-3, 3, (10, 9, 7)).astype(np.float32), echoes["affine"])
    e = fails("shape", "phase2.nii", mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    assert "(10, 9, 7)" in e.problem and "(10, 9, 8)" in e.problem


def test_mismatched_geometry_between_echoes(echoes, rng):
    moved = echoes["affine"].copy()
    moved[:3, 3] += [0.0, 2.0, 0.0]
    save(echoes["mag"][2], rng.uniform(50, 100, SHAPE).astype(np.float32), moved)
    e = fails("geometry", "mag3.nii", mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    assert "2 mm" in e.problem


def test_mag_and_phase_echo_counts_differ(echoes):
    fails("3 magnitude echoes but 2 phase echoes", "phase1.nii", mag=echoes["mag"],
          phase=echoes["phase"][:2], te=TE, b0=3)


def test_missing_te(echoes):
    e = fails("echo times are missing", None, mag=echoes["mag"], phase=echoes["phase"], b0=3)
    assert str(echoes["dir"]) in str(e)


@pytest.mark.parametrize("te,match", [
    ([0.004, 0.009], "2 echo times given for 3 echoes"),
    ([0.004, 0.009, 0.009], "not strictly increasing"),
    ([0.009, 0.004, 0.014], "not strictly increasing"),
    ([4.0, 9.0, 14.0], "seconds"),
    ([0.0, 0.009, 0.014], "positive"),
])
def test_bad_te(echoes, te, match):
    fails(match, None, mag=echoes["mag"], phase=echoes["phase"], te=te, b0=3)


def test_bids_sidecar_without_echo_time(tmp_path, echoes):
    gre = io.load_gre(mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    out = io.write_gre_bids(gre, tmp_path / "bids", "01")
    for f in out["phase"] + out["mag"]:
        f.with_name(f.name.replace(".nii.gz", ".json")).unlink()
    fails("echo times are missing", "bids", bids=tmp_path / "bids")
    assert io.load_gre(bids=tmp_path / "bids", te=TE).n_echoes == 3  # given TEs suffice


def test_nan_in_real_phase_crop(tmp_path, real_phase_dir):
    """The real crop with NaNs (128x128x5x2): rejected, naming that file."""
    nan_file = real_phase_dir / "small_phase_with_nan.nii"
    img = nib.load(str(nan_file))
    mag = save(tmp_path / "mag.nii", np.ones(img.shape, np.float32), img.affine)
    e = fails("NaN or Inf", "small_phase_with_nan.nii", mag=[mag], phase=[nan_file], te=[0.004, 0.008])
    assert "1280 voxels" in e.problem


def test_inf_in_magnitude(echoes, rng):
    data = rng.uniform(50, 100, SHAPE).astype(np.float32)
    data[1, 2, 3] = np.inf
    save(echoes["mag"][0], data, echoes["affine"])
    fails("NaN or Inf", "mag1.nii", mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)


@pytest.mark.parametrize("make,match", [
    (lambda rng: np.full(SHAPE, 0.5, np.float32), "constant"),
    # unwrapped phase: a smooth ramp far beyond +-pi
    (lambda rng: np.broadcast_to(np.linspace(-20, 35, SHAPE[0])[:, None, None], SHAPE).astype(np.float32),
     "unknown phase range"),
    # a magnitude image passed as phase: positive, skewed histogram
    (lambda rng: rng.gamma(2.0, 50.0, SHAPE).astype(np.float32) + 10, "unknown phase range"),
])
def test_unknown_phase_range(echoes, rng, make, match):
    for p in echoes["phase"]:
        save(p, make(rng), echoes["affine"])
    e = fails(match, "phase", mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    assert "phase1.nii" in str(e) and "phase3.nii" in str(e)


def test_unknown_range_single_4d_file_names_it(echoes, rng):
    ph = save(echoes["dir"] / "ph4d.nii.gz", rng.uniform(100, 900, SHAPE + (3,)).astype(np.float32),
              echoes["affine"])
    fails("unknown phase range", "ph4d.nii.gz", mag=echoes["mag"], phase=[ph], te=TE, b0=3)


def test_not_3d(echoes, rng):
    two_d = save(echoes["dir"] / "slice.nii", rng.uniform(50, 100, (10, 9)).astype(np.float32),
                 echoes["affine"])
    fails("expected a 3-D or 4-D image", "slice.nii", mag=[two_d], phase=echoes["phase"][:1], te=TE[:1])
    five_d = save(echoes["dir"] / "five.nii", rng.uniform(-3, 3, SHAPE + (2, 3)).astype(np.float32),
                  echoes["affine"])
    fails("expected a 3-D or 4-D image", "five.nii", mag=echoes["mag"][:1], phase=[five_d], te=TE[:1])
    four_d = save(echoes["dir"] / "four.nii", rng.uniform(-3, 3, SHAPE + (2,)).astype(np.float32),
                  echoes["affine"])
    fails("3-D image per echo", "four.nii", mag=echoes["mag"][:2], phase=[echoes["phase"][0], four_d],
          te=TE[:2])


def test_empty_or_negative_magnitude(echoes):
    save(echoes["mag"][1], np.zeros(SHAPE, np.float32), echoes["affine"])
    fails("zero everywhere", "mag2.nii", mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    fails("negative", "phase1.nii", mag=echoes["phase"], phase=echoes["phase"], te=TE, b0=3)


def test_missing_files_and_directories(echoes, tmp_path):
    fails("file not found", "nope.nii", mag=[tmp_path / "nope.nii"], phase=echoes["phase"], te=TE)
    fails("no multi-echo GRE", "empty", bids=(tmp_path / "empty").mkdir() or tmp_path / "empty")
    fails("directory not found", "absent", bids=tmp_path / "absent")
    with pytest.raises(InputError, match="both magnitude and phase"):
        io.load_gre(mag=echoes["mag"])
    fails("not both", None, bids=tmp_path, mag=echoes["mag"])


def test_implausible_field_strength(echoes):
    fails("implausible", None, mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3000)
    fails("B0 direction", None, mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3, b0_dir=(0, 0, 0))


def test_inputs_never_modified(echoes):
    files = echoes["mag"] + echoes["phase"]
    before = {f: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns) for f in files}
    listing = sorted(p.name for p in echoes["dir"].iterdir())
    io.load_gre(mag=echoes["mag"], phase=echoes["phase"], te=TE, b0=3)
    with pytest.raises(InputError):
        io.load_gre(mag=echoes["mag"], phase=echoes["phase"], te=TE[::-1], b0=3)
    after = {f: (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns) for f in files}
    assert before == after and sorted(p.name for p in echoes["dir"].iterdir()) == listing


@pytest.mark.parametrize("case", ["te order", "shape", "unknown range", "nan", "not 3-D"])
def test_command_line_exits_2_naming_the_file_and_writes_nothing(echoes, rng, capsys, case, real_phase_dir):
    """Through a real subcommand that reads a GRE (``qsmplanner qsm``): exit 2, message, no output."""
    from QSMPlannerLib import cli
    if "qsm" not in cli.build_parser()._subparsers._group_actions[0].choices:
        pytest.skip("no qsm subcommand in this build")
    mags, phases, te, name = [str(p) for p in echoes["mag"]], [str(p) for p in echoes["phase"]], TE, None
    if case == "te order":
        te, name, problem = [0.004, 0.014, 0.009], echoes["dir"].name, "not strictly increasing"
    elif case == "shape":
        save(echoes["mag"][1], rng.uniform(50, 100, (9, 9, 8)).astype(np.float32), echoes["affine"])
        name, problem = "mag2.nii", "shape (9, 9, 8) differs"
    elif case == "unknown range":
        for p in echoes["phase"]:
            save(p, rng.gamma(2.0, 50.0, SHAPE).astype(np.float32) + 10, echoes["affine"])
        name, problem = "phase1.nii", "unknown phase range"
    elif case == "nan":
        img = nib.load(str(real_phase_dir / "small_phase_with_nan.nii"))
        mags = [str(save(echoes["dir"] / "m.nii", np.ones(img.shape, np.float32), img.affine))]
        phases, te = [str(real_phase_dir / "small_phase_with_nan.nii")], [0.004, 0.008]
        name, problem = "small_phase_with_nan.nii", "NaN or Inf"
    else:
        mags = [str(save(echoes["dir"] / "flat.nii", np.ones((10, 9), np.float32), echoes["affine"]))]
        phases, te, name, problem = phases[:1], TE[:1], "flat.nii", "expected a 3-D or 4-D image"
    out = echoes["dir"] / "out" / "qsm.nii.gz"
    argv = ["qsm", "--mag", *mags, "--phase", *phases, "--te", *map(str, te), "--b0", "3", "--out", str(out)]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert name in err and problem in err, err
    assert not out.exists() and not out.parent.exists()


def test_a_header_with_singular_geometry_is_refused(tmp_path):
    """An sform of rank 2 (two voxel axes along one direction) has no world geometry: InputError naming
    the file, not a volume every later stage would misplace."""
    from QSMPlannerLib.io.volumes import read_volume
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.float32)
    header.set_sform(np.array([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), code=1)
    header.set_qform(None, code=0)
    path = tmp_path / "rank2.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), None, header=header), str(path))
    with pytest.raises(InputError, match="rank2.nii.gz.*singular"):
        read_volume(path)
    path = save(tmp_path / "good.nii.gz", np.ones(SHAPE, np.float32), ras_from_ijk_matrix([1.0, 1.0, 1.5]))
    assert read_volume(path).shape3 == SHAPE
