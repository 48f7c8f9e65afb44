"""The digital patient: physics (field = dipole convolution), determinism, consistent truth, BIDS output."""
import json

import numpy as np
import pytest
from scipy import ndimage

from QSMPlannerLib.io.gre import GAMMA_HZ_PER_T
from QSMPlannerLib.phantom import make_patient, write_patient
from QSMPlannerLib.phantom.forward import dipole_field


@pytest.fixture(scope="module")
def patient():
    return make_patient(seed=0, small=True, veins_on_standard_trajectory=True)


def _independent_field(chi, ras_from_ijk, pad_factor=2):
    """Dipole convolution written from scratch: numpy FFT, B0 = RAS S axis expressed on the voxel axes."""
    vox = np.linalg.norm(ras_from_ijk[:3, :3], axis=0)
    direction = ras_from_ijk[:3, :3] / vox
    b = np.linalg.solve(direction, [0.0, 0.0, 1.0])
    shape = [pad_factor * n for n in chi.shape]
    big = np.zeros(shape)
    big[:chi.shape[0], :chi.shape[1], :chi.shape[2]] = chi
    k = np.meshgrid(*[np.fft.fftfreq(n, d=v) for n, v in zip(shape, vox)], indexing="ij")
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    kb = k[0] * b[0] + k[1] * b[1] + k[2] * b[2]
    k2[0, 0, 0] = 1.0
    d = 1.0 / 3.0 - kb ** 2 / k2
    d[0, 0, 0] = 0.0
    return np.real(np.fft.ifftn(np.fft.fftn(big) * d))[:chi.shape[0], :chi.shape[1], :chi.shape[2]]


def test_local_field_equals_an_independent_convolution(patient):
    chi = patient.truth["chi_ppm"].data.astype(float)
    mask = patient.truth["brain_mask"].data > 0
    ours = patient.truth["local_field_ppm"].data
    ref = _independent_field(chi, patient.gre.ras_from_ijk)
    err = ours[mask] - ref[mask]
    err -= err.mean()   # D(0) = 0 in both, but the padding differs: allow a constant
    assert np.sqrt(np.mean(err ** 2)) < 0.02 * np.sqrt(np.mean(ref[mask] ** 2))
    assert np.abs(ref[mask]).max() > 0.01


@pytest.mark.parametrize("voxel", [(1.0, 1.0, 1.0), (0.8, 1.0, 1.6)])
def test_dipole_field_of_a_sphere_matches_the_analytic_solution(voxel):
    n, a, dchi = 96, 11.0, 1.0
    voxel = np.asarray(voxel)
    b = np.array([0.3, -0.2, 0.93])
    b /= np.linalg.norm(b)
    x = (np.indices((n, n, n)).astype(float) - n / 2) * voxel[:, None, None, None]   # mm
    r = np.sqrt((x ** 2).sum(0))
    # partial volume by supersampling the voxel (3x3x3)
    chi = np.zeros((n, n, n))
    offs = (np.arange(3) - 1) / 3.0
    for ox in offs:
        for oy in offs:
            for oz in offs:
                rr = np.sqrt(((x + (np.array([ox, oy, oz]) * voxel)[:, None, None, None]) ** 2).sum(0))
                chi += (rr <= a) / 27.0
    chi *= dchi
    f = dipole_field(chi, voxel, b)
    cos = np.tensordot(b, x, axes=1) / np.maximum(r, 1e-9)
    analytic = dchi / 3.0 * (a / np.maximum(r, 1e-9)) ** 3 * (3 * cos ** 2 - 1)
    shell = (r > 1.6 * a) & (r < 2.4 * a)
    assert np.abs(f[r < a - 2]).max() < 0.03 * dchi       # Lorentz-corrected: no field inside
    rel = np.sqrt(np.mean((f[shell] - analytic[shell]) ** 2)) / np.sqrt(np.mean(analytic[shell] ** 2))
    assert rel < 0.08


def test_background_field_is_harmonic_inside_the_brain(patient):
    # sources are all outside the mask: the background is harmonic (discrete Laplacian leaks near the edge)
    mask = ndimage.binary_erosion(patient.truth["brain_mask"].data > 0, iterations=5)
    total = patient.truth["total_field_ppm"].data.astype(float)
    local = patient.truth["local_field_ppm"].data.astype(float)
    lap = lambda f: ndimage.laplace(f)
    bg = total - local
    assert np.abs(bg[mask]).std() > 0.01                       # a real background field exists
    assert np.sqrt(np.mean(lap(bg)[mask] ** 2)) < 0.2 * np.sqrt(np.mean(lap(total)[mask] ** 2))


def test_phase_encodes_the_total_field(patient):
    gre = patient.gre
    mask = ndimage.binary_erosion(patient.truth["brain_mask"].data > 0, iterations=2)
    total = patient.truth["total_field_ppm"].data
    dte = gre.te_s[1] - gre.te_s[0]
    expected = 2 * np.pi * GAMMA_HZ_PER_T * gre.b0_tesla * 1e-6 * dte * total
    diff = np.angle(np.exp(1j * (gre.phase_rad[..., 1] - gre.phase_rad[..., 0] - expected)))
    assert np.median(np.abs(diff[mask])) < 0.05
    assert gre.phase_rad.min() >= -np.pi and gre.phase_rad.max() < np.pi
    wraps = np.abs(np.diff(gre.phase_rad[..., -1], axis=0)) > np.pi
    assert wraps[mask[1:]].sum() > 50                            # the last echo has phase wraps
    # magnitude decays with TE (T2*) in the brain
    m = gre.magnitude[mask].mean(0)
    assert np.all(np.diff(m) < 0)


def test_tissue_values_and_labels(patient):
    chi = patient.truth["chi_ppm"].data
    lab = patient.truth["labels_gre"].data
    mean = lambda vals: chi[np.isin(lab, vals)].mean()
    assert mean([6, 106]) > mean([16, 116]) > mean([202]) > mean([203])
    assert 0.05 < mean([16, 116]) < 0.12 and -0.05 < mean([203]) < -0.01
    assert mean([210]) > 0.1                                    # veins are paramagnetic
    # texture and partial volume: values inside a nucleus are not a single constant
    assert np.std(chi[lab == 106]) > 0.005
    for v in (16, 116, 8, 108, 7, 107, 9, 109, 6, 106, 5, 105, 1, 101, 2, 102, 201, 202, 203, 204, 210, 211,
              220, 221):
        assert (lab == v).sum() > 0, v
        assert v in patient.label_names
    assert patient.label_names[16] == "STN_L" and patient.label_names[116] == "STN_R"


def test_landmarks_transforms_and_labels_agree(patient):
    from QSMPlannerLib.phantom.patient import _apply
    ac, pc, ms = (np.asarray(patient.landmarks[k]) for k in ("AC", "PC", "MS"))
    assert 20.0 < np.linalg.norm(ac - pc) < 32.0
    # AC-PC coordinates of the true STN centroids: near the textbook indirect target
    y = (ac - pc) / np.linalg.norm(ac - pc)
    x = np.cross(y, ms - pc)
    x /= np.linalg.norm(x)
    z = np.cross(x, y)
    for name, side in (("STN_L", -1), ("STN_R", 1)):
        c = np.array([x, y, z]) @ (np.asarray(patient.stn_centroids[name]) - (ac + pc) / 2)
        assert 7.0 < side * c[0] < 16.0 and -7.0 < c[1] < 5.0 and -10.0 < c[2] < 0.0, (name, c)
    # the T1 labels carried into the GRE by the true transform match the GRE labels
    lt1, lgre = patient.labels_t1, patient.truth["labels_gre"]
    ijk = np.argwhere(np.isin(lgre.data, [8, 108, 6, 106, 203]))
    ras_t1 = _apply(patient.transforms["t1_from_gre"], lgre.ijk_to_ras(ijk))
    it1 = np.rint(lt1.ras_to_ijk(ras_t1)).astype(int)
    ok = np.all((it1 >= 0) & (it1 < lt1.shape3), axis=1)
    same = lt1.data[tuple(it1[ok].T)] == lgre.data[tuple(ijk[ok].T)]
    assert same.mean() > 0.6
    # t1_from_mni (affine part) maps the MNI STN near the true centroid
    stn_mni = np.array([-11.2, -12.7, -7.6])
    assert np.linalg.norm(_apply(patient.transforms["t1_from_mni"], stn_mni)[0]
                          - patient.stn_centroids["STN_L"]) < 5.0


def test_a_vein_lies_on_each_standard_trajectory(patient):
    from QSMPlannerLib.phantom.patient import _apply
    lab = patient.truth["labels_gre"]
    chi = patient.truth["chi_ppm"].data
    gre_from_t1 = np.linalg.inv(patient.transforms["t1_from_gre"])
    assert any("standard trajectory" in v["name"] for v in patient.veins)
    for side in ("left", "right"):
        target = np.asarray(patient.standard_trajectories[side]["target"])
        entry = np.asarray(patient.standard_trajectories[side]["entry"])
        assert 55.0 < np.linalg.norm(entry - target) < 100.0
        pts = target + np.linspace(0.0, 1.0, 300)[:, None] * (entry - target)
        ijk = np.rint(lab.ras_to_ijk(_apply(gre_from_t1, pts))).astype(int)
        on_path = lab.data[tuple(ijk.T)]
        assert on_path[0] == (16 if side == "left" else 116)       # it starts in the STN
        assert (on_path == 210).any()                              # and crosses a vein near the entry
        assert chi[tuple(ijk[on_path == 210].T)].max() > 0.15


def test_ct_shows_the_localizer_at_the_true_frame_pose(patient):
    from QSMPlannerLib.phantom.patient import _apply
    ct = patient.ct
    ct_from_xyz = np.linalg.inv(patient.transforms["xyz_from_ct"])
    # vertical rods of the right, left and anterior plates at mid height (Leksell XYZ)
    for xyz in ((5.0, 40.0, 100.0), (195.0, 160.0, 90.0), (40.0, 215.0, 110.0)):
        ijk = np.rint(ct.ras_to_ijk(_apply(ct_from_xyz, xyz)[0])).astype(int)
        assert ct.data[tuple(ijk)] > 300.0, xyz
    # the skull is bright, the brain soft tissue, air around
    lab_ct_centre = ct.data[tuple(np.array(ct.shape3) // 2)]
    assert -100.0 < lab_ct_centre < 100.0
    assert (ct.data > 700).sum() > 1000 and (ct.data < -900).sum() > 0.2 * ct.data.size


def test_deterministic_per_seed(patient):
    again = make_patient(seed=0, small=True, veins_on_standard_trajectory=True)
    np.testing.assert_array_equal(again.gre.phase_rad, patient.gre.phase_rad)
    np.testing.assert_array_equal(again.ct.data, patient.ct.data)
    np.testing.assert_array_equal(again.truth["labels_gre"].data, patient.truth["labels_gre"].data)
    for k in patient.transforms:
        np.testing.assert_array_equal(again.transforms[k], patient.transforms[k])


def test_write_patient_bids_and_truth(patient, tmp_path):
    from QSMPlannerLib.io.markups import read_points
    from QSMPlannerLib.io.volumes import read_volume
    paths = write_patient(patient, tmp_path)
    sub = tmp_path / "sub-phantom0"
    anat = sub / "anat"
    for e in range(1, patient.gre.n_echoes + 1):
        for part in ("mag", "phase"):
            assert (anat / f"sub-phantom0_echo-{e}_part-{part}_MEGRE.nii.gz").exists()
            meta = json.loads((anat / f"sub-phantom0_echo-{e}_part-{part}_MEGRE.json").read_text())
            assert abs(meta["EchoTime"] - patient.gre.te_s[e - 1]) < 1e-9
    t1 = read_volume(anat / "sub-phantom0_T1w.nii.gz")
    np.testing.assert_allclose(t1.ras_from_ijk, patient.t1.ras_from_ijk, atol=1e-4)
    ct = read_volume(anat / "sub-phantom0_ct.nii.gz")
    np.testing.assert_allclose(ct.ras_from_ijk, patient.ct.ras_from_ijk, atol=1e-4)
    truth = tmp_path / "derivatives" / "truth" / "sub-phantom0"
    for name in ("chi_ppm", "local_field_ppm", "total_field_ppm", "brain_mask", "labels_gre", "labels_t1"):
        assert (truth / f"{name}.nii.gz").exists(), name
    chi = read_volume(truth / "chi_ppm.nii.gz")
    np.testing.assert_allclose(chi.data, patient.truth["chi_ppm"].data, atol=1e-6)
    np.testing.assert_allclose(chi.ras_from_ijk, patient.gre.ras_from_ijk, atol=1e-4)
    pts = read_points(truth / "landmarks.mrk.json")
    for k in ("AC", "PC", "MS"):
        np.testing.assert_allclose(pts[k], patient.landmarks[k], atol=1e-3)
    tr = json.loads((truth / "transforms.json").read_text())
    for k in ("t1_from_gre", "t1_from_ct", "xyz_from_ct", "t1_from_mni"):
        np.testing.assert_allclose(np.array(tr[k]), patient.transforms[k], atol=1e-9)
    stn = json.loads((truth / "stn_centroids.json").read_text())
    np.testing.assert_allclose(stn["STN_R"], patient.stn_centroids["STN_R"], atol=1e-9)
    tsv = (truth / "labels.tsv").read_text().splitlines()
    assert tsv[0] == "index\tname" and "16\tSTN_L" in tsv
    assert paths["truth_dir"] == truth


def test_cli_writes_an_oblique_7t_patient_and_refuses_foreign_dirs(tmp_path, capsys):
    from QSMPlannerLib.cli import main
    out = tmp_path / "bids"
    assert main(["phantom", str(out), "--small", "--seed", "1", "--tilt", "20", "--field", "7",
                 "--echoes", "3", "--snr", "50", "--voxel", "1.5,1.5,2"]) == 0
    anat = out / "sub-phantom1" / "anat"
    from QSMPlannerLib.io.volumes import read_volume
    mag = read_volume(anat / "sub-phantom1_echo-1_part-mag_MEGRE.nii.gz")
    np.testing.assert_allclose(mag.voxel_mm, [3.0, 3.0, 4.0], atol=1e-5)    # --small doubles --voxel
    np.testing.assert_allclose(np.array(mag.shape3) * mag.voxel_mm, [256, 256, 128], atol=4.0)
    assert len(list(anat.glob("*_part-phase_MEGRE.nii.gz"))) == 3
    meta = json.loads((anat / "sub-phantom1_echo-1_part-mag_MEGRE.json").read_text())
    assert meta["MagneticFieldStrength"] == 7.0
    b = np.array(meta["B0DirectionIJK"])
    assert abs(abs(b[2]) - np.cos(np.deg2rad(20.0))) < 1e-6 and abs(abs(b[1]) - np.sin(np.deg2rad(20.0))) < 1e-6
    tr1 = json.loads((out / "derivatives/truth/sub-phantom1/transforms.json").read_text())
    assert not np.allclose(tr1["t1_from_gre"], np.eye(4))
    # re-running over its own output is allowed; a foreign directory is refused with exit 2
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    assert main(["phantom", str(foreign), "--small"]) == 2
    assert (foreign / "keep.txt").read_text() == "user data"
    assert "not a QSMPlanner digital patient" in capsys.readouterr().err


@pytest.mark.main_leg
def test_cli_slab_gre_covers_the_stns_and_registers_to_the_t1(tmp_path, capsys):
    """``phantom --slab 40 --tilt 15``: a 40 mm oblique GRE slab over both STNs; its magnitude registers to
    the patient's T1 (head with neck, bias field, Rician noise): on these 2 x 2 x 4 mm voxels within 0.35 mm
    on average (1 mm at most) of the true transform over the head inside the slab."""
    from QSMPlannerLib.cli import main
    from QSMPlannerLib.io.volumes import read_volume
    from QSMPlannerLib.registration import register_rigid
    out = tmp_path / "bids"
    assert main(["phantom", str(out), "--small", "--seed", "2", "--slab", "40", "--tilt", "15", "--echoes", "2"]) == 0
    anat = out / "sub-phantom2" / "anat"
    mag = read_volume(anat / "sub-phantom2_echo-1_part-mag_MEGRE.nii.gz")
    t1 = read_volume(anat / "sub-phantom2_T1w.nii.gz")
    assert abs(mag.shape3[2] * mag.voxel_mm[2] - 40.0) <= mag.voxel_mm[2]
    truth = json.loads((out / "derivatives/truth/sub-phantom2/transforms.json").read_text())
    t1_from_gre = np.array(truth["t1_from_gre"])
    stn = json.loads((out / "derivatives/truth/sub-phantom2/stn_centroids.json").read_text())
    stn = {k: v for k, v in stn.items() if k.startswith("STN")}
    result = register_rigid(t1, mag)
    corners = mag.voxel_ras_grid()[::7, ::7, ::3].reshape(-1, 3)
    corners = corners[np.asarray(mag.data)[::7, ::7, ::3].reshape(-1) > np.percentile(mag.data, 70)]
    err = np.linalg.norm((corners @ result.fixed_from_moving[:3, :3].T + result.fixed_from_moving[:3, 3])
                         - (corners @ t1_from_gre[:3, :3].T + t1_from_gre[:3, 3]), axis=1)
    assert err.mean() <= 0.35 and err.max() <= 1.0, (err.mean(), err.max())
    assert set(stn) == {"STN_L", "STN_R"}
    for p in stn.values():  # both STNs inside the slab (in GRE voxel k)
        k = mag.ras_to_ijk(np.linalg.solve(t1_from_gre, np.r_[np.asarray(p, float)[:3], 1.0])[:3])[2]
        assert 1 <= k <= mag.shape3[2] - 2
    assert main(["phantom", str(tmp_path / "bad"), "--small", "--slab", "200"]) == 2
    assert "--slab" in capsys.readouterr().err


def test_cli_phantom_with_a_crw_frame_registers_as_crw(tmp_path):
    """``phantom --frame crw``: the CT carries a CRW localizer; ``qsmplanner frame`` recognises it without
    being told and gives the STNs' CRW LAT, AP, VERT within 0.3 mm of the truth written beside the CT, and
    the truth names the CRW coordinates."""
    from QSMPlannerLib.cli import main
    out = tmp_path / "bids"
    assert main(["phantom", str(out), "--small", "--seed", "1", "--frame", "crw", "--echoes", "2"]) == 0
    truth_dir = out / "derivatives/truth/sub-phantom1"
    truth = json.loads((truth_dir / "transforms.json").read_text())
    assert "CRW LAT, AP, VERT" in truth["coordinate_system"]
    assert json.loads((truth_dir / "patient.json").read_text())["frame"] == "crw"
    ct_from_t1 = np.linalg.inv(np.array(truth["t1_from_ct"]))
    stn_t1 = json.loads((truth_dir / "stn_centroids.json").read_text())["STN_L"]
    stn_ct = ct_from_t1[:3, :3] @ np.asarray(stn_t1, float)[:3] + ct_from_t1[:3, 3]
    frame_json = tmp_path / "frame.json"
    assert main(["frame", "--ct", str(out / "sub-phantom1/anat/sub-phantom1_ct.nii.gz"), "--out", str(frame_json),
                 "--target=" + ",".join(f"{v:.4f}" for v in stn_ct)]) == 0
    frame = json.loads(frame_json.read_text())
    assert frame["system"] == "CRW"
    xyz_from_ct = np.array(truth["xyz_from_ct"])
    expected = xyz_from_ct[:3, :3] @ stn_ct + xyz_from_ct[:3, 3]
    got = np.array([frame["target"]["frame"][k] for k in ("LAT", "AP", "VERT")])
    assert np.linalg.norm(got - expected) <= 0.3, (got, expected)
