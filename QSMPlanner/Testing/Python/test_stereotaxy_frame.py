"""Leksell N-localizer registration: analytic fiducials and rendered CTs at random poses."""
import numpy as np
import pytest

from QSMPlannerLib.errors import ProcessingError
from QSMPlannerLib.stereotaxy import (analytic_triplets, fit_triplets, predicted_tre_mm, register_frame,
                                      register_frame_manual, render_localizer_ct, rigid_fit)
from QSMPlannerLib.stereotaxy.geometry import XYZ_FROM_FRAMERAS, apply
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix

STN_XYZ = np.array([[112.0, 97.5, 104.0], [88.0, 97.5, 104.0]])   # STN-like targets, Leksell XYZ
REGION_XYZ = np.array([[100 + dx, 100 + dy, 100 + dz] for dx in (-30, 30) for dy in (-30, 30)
                       for dz in (-30, 30)])


def _random_pose(rng, max_deg=15.0, max_mm=15.0):
    """xyz_from_ras of a frame posed in the image (rotation and shift of frame RAS)."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_matrix(rng.uniform(-max_deg, max_deg, 3))
    pose[:3, 3] = rng.uniform(-max_mm, max_mm, 3)
    return XYZ_FROM_FRAMERAS @ np.linalg.inv(pose)


def _target_error(xyz_from_ras_est, xyz_from_ras_true, targets_xyz):
    ras = apply(np.linalg.inv(xyz_from_ras_true), targets_xyz)
    return float(np.linalg.norm(apply(xyz_from_ras_est, ras) - targets_xyz, axis=1).max())


def test_rigid_fit_proper_rotation(rng):
    src = rng.normal(size=(20, 3)) * 50
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rng.uniform(-90, 90, 3))
    m[:3, 3] = [10, -20, 30]
    assert np.allclose(rigid_fit(src, apply(m, src)), m, atol=1e-9)
    # a mirrored point set still gives a proper rotation (reflection guard)
    fit = rigid_fit(src, src * [-1, 1, 1])
    assert np.linalg.det(fit[:3, :3]) == pytest.approx(1.0)


@pytest.mark.parametrize("tilted", [False, True])
def test_analytic_fiducials_random_poses(tilted, rng):
    for _ in range(4):
        truth = _random_pose(rng)
        # tilted: slice normal up to ~25 degrees off the image S axis (gantry tilt / oblique acquisition)
        normal = [0, 0, 1] if not tilted else rotation_matrix([*rng.uniform(-18, 18, 2), 0]) @ [0, 0, 1]
        reg = fit_triplets(analytic_triplets(truth, normal, rng=rng))
        assert reg.fre_mm < 0.01 and reg.n_rejected == 0
        assert set(reg.plates_found) == {"right", "left", "anterior"}
        assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 0.1
        # noisy centroids (0.3 mm SD per coordinate)
        noisy = fit_triplets(analytic_triplets(truth, normal, noise_mm=0.3, rng=rng))
        assert _target_error(noisy.xyz_from_ras, truth, STN_XYZ) < 0.2
        assert 0.2 < noisy.fre_mm < 1.2


def test_predicted_tre_matches_monte_carlo(rng):
    truth = _random_pose(rng)
    errs, preds = [], []
    for _ in range(20):
        reg = fit_triplets(analytic_triplets(truth, [0, 0, 1], offsets_mm=np.arange(-55, 56, 2.0),
                                             noise_mm=0.3, rng=rng))
        errs.append(_target_error(reg.xyz_from_ras, truth, STN_XYZ[:1]))
        preds.append(reg.predicted_tre_mm(target_xyz=STN_XYZ[0]))
    rms = np.sqrt(np.mean(np.square(errs)))
    assert 0.5 < np.mean(preds) / rms < 2.0, (np.mean(preds), rms)
    # the formula grows away from the fiducials' centroid
    pts = rng.normal(size=(50, 3)) * 60
    assert predicted_tre_mm(pts, 0.5, [0, 0, 0]) < predicted_tre_mm(pts, 0.5, [300, 0, 0])


def _head_hu(ras_from_ijk, shape, centre_ras):
    """Soft tissue ellipsoid with a 1300 HU skull shell."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1).T
    p = apply(ras_from_ijk, idx) - centre_ras
    r = np.sqrt((p[:, 0] / 72) ** 2 + (p[:, 1] / 90) ** 2 + (p[:, 2] / 80) ** 2).reshape(shape)
    h = np.full(shape, -1000.0, np.float32)
    h[r < 1.0] = 40.0
    h[(r > 0.92) & (r < 0.97)] = 1300.0
    return h


PINS_XYZ = [(np.array([100 + s * 60, y, 110.0]), np.array([100 + s * 100, y, 110.0]))
            for s in (-1, 1) for y in (60.0, 130.0)]


def _ct_grid(voxel, direction=None, lo=(-118.0, -95.0, -80.0), hi=(118.0, 135.0, 80.0)):
    lo, hi = np.array(lo), np.array(hi)
    shape = tuple(int(s) for s in np.ceil((hi - lo) / voxel) + 1)
    centre = (lo + hi) / 2
    m = ras_from_ijk_matrix(voxel, direction)
    m[:3, 3] = centre - m[:3, :3] @ ((np.array(shape) - 1) / 2)
    return m, shape


@pytest.mark.parametrize("slice_mm, oblique", [(1.0, False), (3.0, True)])
def test_rendered_ct_random_pose(slice_mm, oblique, rng):
    truth = _random_pose(rng, 12.0, 10.0)
    direction = None
    if oblique:   # rotated axes and a 15 degree gantry tilt (slice axis sheared in the j-k plane)
        direction = rotation_matrix([8.0, -5.0, 4.0])
        direction[:, 2] = direction @ [0.0, np.sin(np.radians(15)), np.cos(np.radians(15))]
    ras_from_ijk, shape = _ct_grid(np.array([0.9, 0.9, slice_mm]), direction)
    centre = apply(np.linalg.inv(truth), [100.0, 110.0, 100.0])
    # distractors: metal pins and 80 small bright "calcifications" (1-4 mm) inside the head
    balls_xyz = apply(truth, centre + rng.uniform(-1, 1, (80, 3)) * [55, 70, 60])
    balls = [(p, p + rng.normal(0, 1.0, 3)) for p in balls_xyz]
    ct = render_localizer_ct(ras_from_ijk, shape, truth, head_hu=_head_hu(ras_from_ijk, shape, centre),
                             rng=rng, pins_xyz=PINS_XYZ + balls)
    reg = register_frame(ct)
    assert set(reg.plates_found) == {"right", "left", "anterior"}
    assert reg.fre_mm < 0.15
    assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 0.2
    assert _target_error(reg.xyz_from_ras, truth, REGION_XYZ) < 0.3
    d = reg.to_dict(target_ras=apply(np.linalg.inv(truth), STN_XYZ[0]))
    assert d["target"]["LeksellXYZ_mm"] == pytest.approx(STN_XYZ[0], abs=0.2)
    assert d["n_points"] == reg.n_points > 60 and d["fre_per_plate_mm"].keys() == {"right", "left", "anterior"}


def test_partial_coverage_and_failures(rng):
    truth = _random_pose(rng, 8.0, 5.0)
    # only the middle 60 mm of the 120 mm rods are in the field of view, 2 mm slices
    ras_from_ijk, shape = _ct_grid(np.array([1.0, 1.0, 2.0]), lo=(-118, -95, -30), hi=(118, 135, 30))
    ct = render_localizer_ct(ras_from_ijk, shape, truth, rng=rng)
    reg = register_frame(ct)
    assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 0.3
    # two plates only: refused
    two = render_localizer_ct(ras_from_ijk, shape, truth, rng=rng, plates=("right", "left"))
    with pytest.raises(ProcessingError, match="plate"):
        register_frame(two)
    # no localizer at all (a head): refused with a clear message
    head = Volume(_head_hu(ras_from_ijk, shape, np.zeros(3)), ras_from_ijk, "ct", {"modality": "CT"})
    with pytest.raises(ProcessingError, match="localizer not found"):
        register_frame(head)


def test_manual_clicks(rng):
    truth = _random_pose(rng)
    ras_from_xyz = np.linalg.inv(truth)
    clicks = {}
    for plate, (first_rod, diag, second_rod) in {
            "right": ((5, 40), None, (5, 160)), "left": ((195, 40), None, (195, 160)),
            "anterior": ((40, 215), None, (160, 215))}.items():
        rows = []
        for z in (60.0, 100.0, 140.0):          # three axial (frame) slices per plate
            a = np.array([*first_rod, z]) if plate != "anterior" else np.array([first_rod[0], 215, z])
            c = np.array([*second_rod, z]) if plate != "anterior" else np.array([second_rod[0], 215, z])
            b = a + (z - 40.0) / 120.0 * (c - a)
            rows.append(tuple(apply(ras_from_xyz, p) + rng.normal(0, 0.2, 3) for p in (a, b, c)))
        clicks[plate] = rows
    reg = register_frame_manual(clicks)
    assert reg.method == "manual" and reg.n_points == 9
    assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 1.0


def test_any_image_orientation(rng):
    # the frame may sit in any orientation in the image (no prior on the axes): labels come from the fit
    for _ in range(3):
        pose = np.eye(4)
        pose[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        pose[:3, :3] *= np.sign(np.linalg.det(pose[:3, :3]))
        truth = XYZ_FROM_FRAMERAS @ np.linalg.inv(pose)
        normal = pose[:3, :3] @ rotation_matrix([*rng.uniform(-15, 15, 2), 0]) @ [0, 0, 1]
        reg = fit_triplets(analytic_triplets(truth, normal, noise_mm=0.1, rng=rng))
        assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 0.1


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_mr_localizer_box(polarity, rng):
    """MR box: four plates (posterior too), fluid rods bright or dark on a plate-signal background."""
    truth = _random_pose(rng, 8.0, 8.0)
    ras_from_ijk, shape = _ct_grid(np.array([1.2, 1.2, 2.0]), lo=(-118, -125, -70), hi=(118, 135, 70))
    background = np.full(shape, 300.0 if polarity == "dark" else 20.0, np.float32)
    rod = 0.0 if polarity == "dark" else 900.0
    mr = render_localizer_ct(ras_from_ijk, shape, truth, head_hu=background, noise_hu=10.0, rng=rng,
                             plates=("right", "left", "anterior", "posterior"), rod_hu=rod)
    mr.meta["modality"] = "MR"
    reg = register_frame(mr, polarity=polarity)
    assert set(reg.plates_found) == {"right", "left", "anterior", "posterior"}
    assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 0.3


def test_unlabelled_low_contrast_image_falls_back_to_relative_threshold(rng):
    """An image without a modality whose rods never reach 400 (e.g. an MR read from a file)."""
    truth = _random_pose(rng, 8.0, 8.0)
    ras_from_ijk, shape = _ct_grid(np.array([1.2, 1.2, 2.0]))
    img = render_localizer_ct(ras_from_ijk, shape, truth, head_hu=np.full(shape, 20.0, np.float32),
                              noise_hu=3.0, rng=rng, rod_hu=200.0)
    img.meta.pop("modality")
    reg = register_frame(img)
    assert any("threshold" in w for w in reg.warnings)
    assert _target_error(reg.xyz_from_ras, truth, STN_XYZ) < 0.3


def test_box_dimensions_reported(rng):
    truth = _random_pose(rng)
    reg = fit_triplets(analytic_triplets(truth, [0, 0, 1], noise_mm=0.1, rng=rng))
    box = reg.to_dict()["box_measured_mm"]
    assert box["lateral_plate_separation"] == pytest.approx(190.0, abs=0.1)
    assert box["anterior"]["rod_spacing"] == pytest.approx(120.0, abs=0.1)
    assert not reg.warnings
    # an image whose voxel size is 1 % off (box looks 1 % larger): flagged
    scaled = truth.copy()
    scaled[:3, :3] /= 1.01
    reg = fit_triplets(analytic_triplets(scaled, [0, 0, 1], rng=rng), max_fre_mm=5.0)
    box = reg.box_measured
    assert box["lateral_plate_separation"] == pytest.approx(190.0 * 1.01, abs=0.5)
    assert any("measures differently" in w for w in reg.warnings)
