"""N-localizer registration of Leksell G, CRW and BRW frames: analytic fiducials, rendered CTs with the
clutter of a clinical CT, CTs without a localizer, manual clicks, MR boxes."""
import numpy as np
import pytest

from QSMPlannerLib.errors import ProcessingError
from QSMPlannerLib.stereotaxy import (Clutter, analytic_candidates, fit_candidates, frame_ct_grid, frame_pose,
                                      get_system, predicted_tre_mm, register_frame, register_frame_manual,
                                      render_frame_ct, render_localizer_ct, rigid_fit)
from QSMPlannerLib.stereotaxy.detection import find_candidates
from QSMPlannerLib.stereotaxy.geometry import FRAMERAS_FROM_XYZ, XYZ_FROM_FRAMERAS, apply
from QSMPlannerLib.volume import Volume, ras_from_ijk_matrix, rotation_matrix

STN_FRAME = np.array([[12.0, -2.5, -4.0], [-12.0, -2.5, -4.0]])     # STN-like targets, frame RAS mm
REGION_FRAME = np.array([[dx, dy, dz] for dx in (-30, 30) for dy in (-30, 30) for dz in (-30, 30)], float)
SYSTEMS = ("leksell", "crw", "brw")


def _random_pose(rng, max_deg=10.0, max_mm=10.0):
    return frame_pose(rng.uniform(-max_deg, max_deg, 3), rng.uniform(-max_mm, max_mm, 3))


def _target_error(frame_from_ras_est, frame_from_ras_true, targets_frame):
    ras = apply(np.linalg.inv(frame_from_ras_true), targets_frame)
    return float(np.linalg.norm(apply(frame_from_ras_est, ras) - targets_frame, axis=1).max())


def test_rigid_fit_proper_rotation(rng):
    src = rng.normal(size=(20, 3)) * 50
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rng.uniform(-90, 90, 3))
    m[:3, 3] = [10, -20, 30]
    assert np.allclose(rigid_fit(src, apply(m, src)), m, atol=1e-9)
    fit = rigid_fit(src, src * [-1, 1, 1])            # a mirrored point set still gives a proper rotation
    assert np.linalg.det(fit[:3, :3]) == pytest.approx(1.0)


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("tilted", [False, True])
def test_analytic_fiducials_random_poses(system, tilted, rng):
    for _ in range(3):
        truth = _random_pose(rng)
        # tilted: slices up to ~25 degrees off the image's axial plane (gantry tilt, oblique acquisition)
        normal = [0, 0, 1] if not tilted else rotation_matrix([*rng.uniform(-18, 18, 2), 0]) @ [0, 0, 1]
        reg = fit_candidates(analytic_candidates(truth, system, normal, spacing_mm=1.5))
        assert reg.system == system and reg.frame_system.name in ("Leksell G", "CRW", "BRW")
        assert reg.fre_mm < 0.01 and reg.n_rejected == 0
        assert set(reg.plates_found) == set(get_system(system).required_plates)
        assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.01
        # noisy centroids (0.3 mm SD per coordinate) and random clutter points in every slice
        noisy = fit_candidates(analytic_candidates(truth, system, normal, spacing_mm=1.0, noise_mm=0.3, rng=rng,
                                                   n_clutter=15))
        assert noisy.system == system
        assert _target_error(noisy.frame_from_ras, truth, STN_FRAME) < 0.15
        assert noisy.fre_mm < 0.15 < noisy.fle_mm < 1.0            # lines average the per-slice noise out


@pytest.mark.parametrize("jitter_mm, noise_mm", [(0.0, 0.3), (0.15, 0.1)])
def test_predicted_tre_matches_monte_carlo(jitter_mm, noise_mm, rng):
    """Per-slice noise alone, and rods departing from the model by ``jitter_mm`` (shared by all of a rod's
    points): the predicted TRE at the STN is within a factor two of the Monte Carlo RMS error."""
    errs, preds = [], []
    for _ in range(16):
        truth = _random_pose(rng)
        reg = fit_candidates(analytic_candidates(truth, "leksell", spacing_mm=2.0, noise_mm=noise_mm, rng=rng,
                                                 rod_jitter_mm=jitter_mm))
        errs.append(_target_error(reg.frame_from_ras, truth, STN_FRAME[:1]))
        preds.append(reg.predicted_tre_mm(target_ras=apply(np.linalg.inv(truth), STN_FRAME[0])))
    rms = np.sqrt(np.mean(np.square(errs)))
    assert 0.5 < np.mean(preds) / rms < 2.0, (np.mean(preds), rms)
    pts = rng.normal(size=(50, 3)) * 60               # the formula grows away from the fiducials' centroid
    assert predicted_tre_mm(pts, 0.5, [0, 0, 0]) < predicted_tre_mm(pts, 0.5, [300, 0, 0])


@pytest.mark.parametrize("system", SYSTEMS)
def test_pose_rests_on_every_rod(system, rng):
    """One parallel rod 0.5 mm off its drawing (a bent plate): the diagonal fiducials alone put the STN
    0.14-0.18 mm off (its Brown ratios are all skewed); the pose fitted to all nine rods keeps it within
    0.11 mm, the predicted TRE says so, and FRE is the diagonal fiducials' RMS under that final pose."""
    model = get_system(system)
    plate = model.required_plates[0]
    first, _, second = model.plates[plate].rods()
    across = (second[0] - first[0]) / np.linalg.norm(second[0] - first[0])
    for _ in range(2):
        truth = _random_pose(rng, 8.0, 8.0)
        normal = rotation_matrix([*rng.uniform(-10, 10, 2), 0]) @ [0, 0, 1]
        reg = fit_candidates(analytic_candidates(truth, system, normal, spacing_mm=2.0, noise_mm=0.1, rng=rng,
                                                 rod_offsets_mm={(plate, 0): 0.5 * across}))
        error = _target_error(reg.frame_from_ras, truth, STN_FRAME)
        assert error < 0.11
        assert 0.5 * error < reg.predicted_tre_mm(target_ras=apply(np.linalg.inv(truth), STN_FRAME[0])) < 2.0 * error
        residuals = np.linalg.norm(apply(reg.xyz_from_ras, reg.image_points_ras) - reg.frame_points_xyz, axis=1)
        assert reg.fre_mm == pytest.approx(np.sqrt(np.mean(residuals ** 2)), rel=1e-9)
        assert reg.worst_fiducial["residual_mm"] == pytest.approx(residuals.max(), rel=1e-9)
        assert reg.box_measured[plate]["rod_offset_from_model"]["first"] > 0.3     # the bent rod shows


@pytest.mark.parametrize("system, slice_mm, tilt_deg", [("leksell", 1.0, 0.0), ("crw", 2.0, 12.0),
                                                        ("brw", 1.0, 0.0), ("brw", 2.5, -10.0)])
def test_clinical_ct_with_clutter(system, slice_mm, tilt_deg, rng):
    """Head with skull and jaw, contrast vessels (some beside the rods), dental metal with streaks, pins,
    posts, ring, head holder and table: the frame is found, recognised and fitted."""
    truth = _random_pose(rng, 6.0, 6.0)
    ras_from_ijk, shape = frame_ct_grid(system, (1.0, 1.0, slice_mm), tilt_deg=tilt_deg)
    ct = render_frame_ct(ras_from_ijk, shape, truth, system, clutter=Clutter(), noise_hu=15.0, rng=rng,
                         dtype=np.int16)
    reg = register_frame(ct)
    assert reg.system == system
    assert set(reg.plates_found) == set(get_system(system).required_plates)
    assert reg.fre_mm < 0.15 and reg.worst_fiducial["residual_mm"] < 0.5
    assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.1
    assert _target_error(reg.frame_from_ras, truth, REGION_FRAME) < 0.2
    assert reg.predicted_tre_mm(target_ras=apply(np.linalg.inv(truth), STN_FRAME[0])) < 0.1
    d = reg.to_dict(target_ras=apply(np.linalg.inv(truth), STN_FRAME[0]))
    assert d["system"] == get_system(system).name
    assert d["target"]["frame"] == pytest.approx(dict(zip(get_system(system).native_axes,
                                                          get_system(system).native(STN_FRAME[0]))), abs=0.1)
    rods = d["localizer_fiducials"]["rods"]
    assert len(rods) == 9 and all(r["n_points"] >= 10 for r in rods)
    assert np.allclose(np.array(d["image_from_frame"]) @ np.array(d["frame_from_ras"]), np.eye(4), atol=1e-9)
    # every rod's fitted end points lie on the true rod
    for r in rods:
        model = get_system(system).plates[r["plate"]].rods()[("first", "diagonal", "second").index(r["rod"])]
        a, b = model
        for p in (r["start_ras"], r["end_ras"]):
            q = apply(truth, p) - a
            axis = (b - a) / np.linalg.norm(b - a)
            assert np.linalg.norm(q - (q @ axis) * axis) < 0.15


@pytest.mark.parametrize("system", SYSTEMS)
def test_whole_number_hu(system, rng):
    """Scanners store whole HU: a cluttered CT at the digital patient's coarse voxels (1.6 x 1.6 x 3 mm,
    45 degree diagonals cut into long blobs) registers as well rounded to int16 as in float HU."""
    for _ in range(2):
        truth = _random_pose(rng, 6.0, 6.0)
        ras_from_ijk, shape = frame_ct_grid(system, (1.6, 1.6, 3.0))
        ct = render_frame_ct(ras_from_ijk, shape, truth, system, clutter=Clutter(), noise_hu=8.0, rng=rng)
        whole_hu = np.clip(np.rint(ct.data), -1024, 32767).astype(np.int16)
        for stored, image in (("float", ct), ("whole HU", ct.with_data(whole_hu))):
            reg = register_frame(image)
            assert reg.system == system, stored
            assert reg.fre_mm < 0.3, (stored, reg.fre_mm)
            assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.2, stored


def test_forced_and_wrong_system(rng):
    truth = _random_pose(rng, 5.0, 5.0)
    cands = analytic_candidates(truth, "crw", spacing_mm=2.0)
    assert fit_candidates(cands).system == "crw"
    assert fit_candidates(cands, system="crw").system == "crw"
    with pytest.raises(ProcessingError, match="Leksell G"):
        fit_candidates(cands, system="leksell")           # its plates are 10 mm farther apart


def test_cut_rods_and_failures(rng):
    truth = _random_pose(rng, 6.0, 5.0)
    # only the middle 70 mm of the 120 mm rods are in the field of view, 2 mm slices
    ras_from_ijk, shape = frame_ct_grid("leksell", (1.0, 1.0, 2.0), s_range_mm=(-35.0, 35.0))
    reg = register_frame(render_frame_ct(ras_from_ijk, shape, truth, "leksell", clutter=Clutter(), rng=rng))
    assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.1
    # two plates only: refused, saying what was found
    two = render_frame_ct(ras_from_ijk, shape, truth, "leksell", clutter=Clutter(), rng=rng,
                          plates=("right", "left"))
    with pytest.raises(ProcessingError, match="no N-localizer: 2 of 3 plates"):
        register_frame(two)
    # a head CT with pins, posts, vessels and dental metal but no localizer
    head = render_frame_ct(ras_from_ijk, shape, truth, "leksell", clutter=Clutter(), rng=rng, plates=())
    with pytest.raises(ProcessingError, match="no N-localizer: 0 of 3 plates"):
        register_frame(head)


@pytest.mark.parametrize("angles, registers", [((0.0, 0.0, 0.0), False), ((0.0, 6.0, 0.0), True)])
def test_plate_at_the_edge_of_the_field_of_view(angles, registers, rng):
    """A 350 mm field of view (0.68 mm pixels) whose edge runs 0.5 mm short of the right plate's rods:
    their cut blobs (centroids pulled inward) are not rods, so the CT exits with its line instead of a
    pose 0.2 mm off; tilted 6 degrees the plate enters the field of view over part of its height and the
    frame registers from what is whole."""
    truth = frame_pose(angles, [0.0, 0.0, 0.0])
    pixel = 350.0 / 512
    ras_from_ijk, shape = frame_ct_grid("leksell", (pixel, pixel, 2.0), shape=(300, 300, 66))
    edge = max(apply(ras_from_ijk, [i, j, 0])[0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)) + pixel / 2
    ras_from_ijk[:2, 3] += [94.5 - edge, 27.5]        # the right plate's rods are at R = 95; A -75..130
    ct = render_frame_ct(ras_from_ijk, shape, truth, "leksell", clutter=Clutter(), noise_hu=15.0, rng=rng,
                         dtype=np.int16, psf_mm=0.4)
    if registers:
        reg = register_frame(ct)
        assert set(reg.plates_found) == {"right", "left", "anterior"}
        assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.05
    else:
        with pytest.raises(ProcessingError, match="no N-localizer: 2 of 3 plates"):
            register_frame(ct)


def test_speckled_image_is_bounded(rng):
    """Thousands of bright specks per slice: candidates are capped, the answer is a one-line refusal."""
    data = rng.normal(0.0, 20.0, (128, 128, 24)).astype(np.float32) - 1000.0
    idx = rng.integers(0, 128, (9000, 3))
    idx[:, 2] %= 24
    data[idx[:, 0], idx[:, 1], idx[:, 2]] = 2000.0
    ct = Volume(data, np.diag([1.0, 1.0, 2.0, 1.0]), "ct", {"modality": "CT"})
    cands = find_candidates(ct, 400.0, max_per_slice=50)
    assert np.bincount(cands.slice_index).max() <= 50
    with pytest.raises(ProcessingError, match="no N-localizer"):
        register_frame(ct)


def test_manual_clicks(rng):
    truth_xyz = XYZ_FROM_FRAMERAS @ _random_pose(rng)
    ras_from_xyz = np.linalg.inv(truth_xyz)
    clicks = {}
    for plate, (first_rod, second_rod) in {"right": ((5, 40), (5, 160)), "left": ((195, 40), (195, 160)),
                                           "anterior": ((40, 215), (160, 215))}.items():
        rows = []
        for z in (60.0, 100.0, 140.0):          # three axial (frame) slices per plate
            a, c = np.array([*first_rod, z]), np.array([*second_rod, z])
            b = a + (z - 40.0) / 120.0 * (c - a)
            rows.append(tuple(apply(ras_from_xyz, p) + rng.normal(0, 0.2, 3) for p in (a, b, c)))
        clicks[plate] = rows
    reg = register_frame_manual(clicks)
    assert reg.method == "manual" and reg.n_points == 9 and reg.system == "leksell"
    assert _target_error(reg.frame_from_ras, FRAMERAS_FROM_XYZ @ truth_xyz, STN_FRAME) < 1.0


def test_leksell_in_any_orientation(rng):
    # the Leksell box has no symmetry: it is recognised in any orientation in the image
    for _ in range(3):
        pose = np.eye(4)
        pose[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        pose[:3, :3] *= np.sign(np.linalg.det(pose[:3, :3]))
        truth = np.linalg.inv(pose)
        normal = pose[:3, :3] @ rotation_matrix([*rng.uniform(-15, 15, 2), 0]) @ [0, 0, 1]
        reg = fit_candidates(analytic_candidates(truth, "leksell", normal, spacing_mm=2.0, noise_mm=0.1, rng=rng))
        assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.1


def test_symmetric_localizers_take_the_upright_labelling(rng):
    """The BRW ring looks the same turned by 120 degrees and the CRW box turned half a turn about AP:
    the labelling least rotated from the image axes is taken."""
    for system in ("brw", "crw"):
        truth = frame_pose([0.0, 0.0, 25.0], [3.0, -2.0, 1.0])
        reg = fit_candidates(analytic_candidates(truth, system, spacing_mm=2.0))
        assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.01


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_mr_localizer_box(polarity, rng):
    """MR box: four plates (posterior too), fluid rods bright or dark on a plate-signal background."""
    truth = XYZ_FROM_FRAMERAS @ _random_pose(rng, 8.0, 8.0)
    voxel = np.array([1.2, 1.2, 2.0])
    lo, hi = np.array([-118.0, -125.0, -70.0]), np.array([118.0, 135.0, 70.0])
    shape = tuple(int(s) for s in np.ceil((hi - lo) / voxel) + 1)
    ras_from_ijk = ras_from_ijk_matrix(voxel, origin=lo)
    background = np.full(shape, 300.0 if polarity == "dark" else 20.0, np.float32)
    mr = render_localizer_ct(ras_from_ijk, shape, truth, head_hu=background, noise_hu=10.0, rng=rng,
                             plates=("right", "left", "anterior", "posterior"),
                             rod_hu=0.0 if polarity == "dark" else 900.0)
    mr.meta["modality"] = "MR"
    reg = register_frame(mr, polarity=polarity)
    assert set(reg.plates_found) == {"right", "left", "anterior", "posterior"}
    assert _target_error(reg.frame_from_ras, FRAMERAS_FROM_XYZ @ truth, STN_FRAME) < 0.1


def test_unlabelled_low_contrast_image_falls_back_to_relative_threshold(rng):
    """An image without air and a modality whose rods never reach 400 (e.g. an MR read from a file)."""
    truth = _random_pose(rng, 8.0, 8.0)
    ras_from_ijk, shape = frame_ct_grid("leksell", (1.2, 1.2, 2.0))
    img = render_frame_ct(ras_from_ijk, shape, truth, "leksell", background=np.full(shape, 20.0, np.float32),
                          noise_hu=3.0, rng=rng, rod_hu=200.0)
    img.meta.pop("modality")
    reg = register_frame(img)
    assert 20.0 < reg.threshold < 200.0
    assert _target_error(reg.frame_from_ras, truth, STN_FRAME) < 0.1


def test_box_dimensions_reported(rng):
    truth = _random_pose(rng)
    reg = fit_candidates(analytic_candidates(truth, "leksell", spacing_mm=2.0, noise_mm=0.1, rng=rng))
    box = reg.to_dict()["box_measured_mm"]
    assert box["lateral_plate_separation"] == pytest.approx(190.0, abs=0.1)
    assert box["anterior"]["rod_spacing"] == pytest.approx(120.0, abs=0.1)
    assert not reg.warnings
    # an image whose voxel size is 1 % off (the localizer looks 1 % larger): flagged
    scaled = truth.copy()
    scaled[:3, :3] /= 1.01
    reg = fit_candidates(analytic_candidates(scaled, "leksell", spacing_mm=2.0), max_fre_mm=5.0)
    assert reg.box_measured["lateral_plate_separation"] == pytest.approx(190.0 * 1.01, abs=0.5)
    assert any("measures differently" in w for w in reg.warnings)
