"""Planning core on synthetic volumes: target suggestion, vesselness, risk maps, entry search.

A synthetic head (ellipsoid brain, 1 mm voxels, RAS = scanner axes) with both STNs, a paramagnetic blob
(GP-like) and a vein placed across the straight standard trajectory of the right STN.
"""
import time

import numpy as np
import pytest

from QSMPlannerLib.planning import (Instruments, RiskMap, score_trajectory, search_entries,
                                    standard_trajectory, suggest_target, vessel_mask)
from QSMPlannerLib.planning.trajectory import direction_from_angles
from QSMPlannerLib.volume import Volume

STN_R = np.array([12.0, -3.0, -5.0])
STN_L = np.array([-12.0, -3.0, -5.0])


def _grid(shape=(140, 160, 130), origin=(-70.0, -90.0, -60.0)):
    m = np.eye(4)
    m[:3, 3] = origin
    return m


def _segment_distance(points, a, b):
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1)


@pytest.fixture(scope="module")
def head():
    rng = np.random.default_rng(3)
    shape = (140, 160, 130)
    ras_from_ijk = _grid(shape)
    vol = Volume(np.zeros(shape, np.float32), ras_from_ijk)
    ras = vol.voxel_ras_grid()
    brain = ((ras[..., 0] / 66) ** 2 + ((ras[..., 1] + 10) / 82) ** 2 + ((ras[..., 2] - 5) / 62) ** 2) <= 1
    chi = rng.normal(0, 0.01, shape).astype(np.float32) * brain
    labels = np.zeros(shape, np.uint8)
    for value, c in ((1, STN_L), (2, STN_R)):
        d = (ras - c) / np.array([6.0, 4.5, 3.0])
        stn = (d ** 2).sum(-1) <= 1
        labels[stn] = value
        chi[stn] += 0.09
    r_gp = np.linalg.norm(ras - np.array([22.0, 4.0, 2.0]), axis=-1)
    gp = r_gp <= 5.0
    chi += 0.2 * np.clip((6.0 - r_gp) / 2.0, 0.0, 1.0)  # nucleus with a partial-volume edge
    # vein across the standard right trajectory, 40 mm above the target, perpendicular to the path
    u = direction_from_angles(60.0, 20.0, "right")
    p = STN_R + 40.0 * u
    w = np.cross(u, [1.0, 0, 0])
    w /= np.linalg.norm(w)
    a, b = p - 20 * w, p + 20 * w
    dist = _segment_distance(ras.reshape(-1, 3), a, b).reshape(shape)
    vein = dist <= 1.2
    chi[vein] += 0.45
    return {"chi": Volume(chi, ras_from_ijk, "chi"), "brain": Volume(brain.astype(np.uint8), ras_from_ijk),
            "labels": Volume(labels, ras_from_ijk), "vein": vein, "vein_ends": (a, b), "gp": gp}


def test_suggested_target_is_dorsolateral_inside_stn(head):
    lab = head["labels"]
    for side, value, c, sign in (("right", 2, STN_R, 1), ("left", 1, STN_L, -1)):
        t = suggest_target(lab, side)
        ijk = np.rint(lab.ras_to_ijk(t)).astype(int)
        assert lab.data[tuple(ijk)] == value
        assert sign * (t[0] - c[0]) > 1.0   # lateral of the centroid
        assert t[2] - c[2] > 0.3            # dorsal (superior)
    tl, tr = suggest_target(lab, "L"), suggest_target(lab, "R")
    assert np.allclose(tl * [-1, 1, 1], tr, atol=1.01)  # mirror-symmetric anatomy -> mirrored targets


def test_vessel_mask_finds_vein_not_blobs(head):
    mask = vessel_mask(head["chi"], head["brain"])
    m = mask.data.astype(bool)
    assert mask.same_geometry(head["chi"])
    assert m[head["vein"]].mean() > 0.6                 # most of the vein
    assert m[head["gp"]].mean() < 0.1                   # not the paramagnetic blob
    assert not m[head["labels"].data > 0].any()         # not the STN
    assert m[~head["vein"]].sum() < 0.3 * m.sum()       # few false positives


@pytest.fixture(scope="module")
def risk(head):
    vmask = vessel_mask(head["chi"], head["brain"])
    return RiskMap.from_masks(vessels=vmask, brain=head["brain"])


def test_standard_flagged_suggested_safe(head, risk):
    target = suggest_target(head["labels"], "right")
    res = search_entries(target, "right", risk, margin_mm=3.0)
    assert res.standard is not None and not res.standard.safe
    assert res.standard.vessel_clearance_mm < 3.0
    assert res.feasible and len(res.candidates) >= 3
    vein_pts = head["chi"].ijk_to_ras(np.argwhere(head["vein"]).astype(float))
    inst = Instruments()
    for cand in res.candidates:
        assert cand.safe and cand.vessel_clearance_mm >= 3.0
        # independent check against the true vein voxels: every instrument track keeps the margin
        u = (cand.entry_ras - cand.target_ras) / cand.length_mm
        e1 = np.array([1.0, 0, 0]) - u[0] * u
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(u, e1)
        for da, db, r in inst.offsets():
            off = da * e1 + db * e2
            d = _segment_distance(vein_pts, cand.target_ras + off - 2 * u, cand.entry_ras + off) - r
            assert d.min() >= 3.0 - 0.9   # voxel-centre truth vs surface distance (half-voxel + interp.)
    assert "FLAGGED" in res.statement() and "every suggested" in res.statement()
    # the profile runs from below the target to the entry
    prof = res.candidates[0].profile
    assert prof["depth_mm"][0] < 0 and abs(prof["depth_mm"][-1] - res.candidates[0].length_mm) <= 0.5
    assert np.nanmin(prof["vessels_clearance_mm"]) == pytest.approx(res.candidates[0].vessel_clearance_mm)


def test_standard_profile_dips_at_the_vein(head, risk):
    target = STN_R
    entry = standard_trajectory(target, "right", risk)
    sc = score_trajectory(target, entry, risk, "right")
    prof = sc.profile
    k = np.argmin(prof["vessels_clearance_mm"])
    assert 34.0 <= prof["depth_mm"][k] <= 46.0           # the vein sits 40 mm above the target
    assert sc.vessel_distance_mm < 1.0                   # the centre line goes through it


def test_without_vessels_everything_is_safe_and_margin_matters(head):
    brain = head["brain"]
    empty = brain.with_data(np.zeros(brain.shape3, np.uint8))
    rm = RiskMap.from_masks(vessels=empty, brain=brain)
    res = search_entries(STN_R, "right", rm)
    assert res.n_safe == res.n_evaluated and res.standard.safe
    # a larger margin than any path can keep -> nothing feasible, and the statement says so
    vm = vessel_mask(head["chi"], brain)
    rm2 = RiskMap.from_masks(vessels=vm, brain=brain)
    res2 = search_entries(STN_R, "right", rm2, margin_mm=60.0)
    assert not res2.feasible and "NOT safe" in res2.statement()


def test_ventricle_crossing_makes_unsafe(head):
    brain = head["brain"]
    ras = brain.voxel_ras_grid()
    u = direction_from_angles(60.0, 20.0, "right")
    c = STN_R + 25 * u
    vent = (np.linalg.norm(ras - c, axis=-1) <= 4).astype(np.uint8)
    rm = RiskMap.from_masks(ventricles=brain.with_data(vent), brain=brain)
    sc = score_trajectory(STN_R, STN_R + 80 * u, rm, "right")
    assert sc.crosses_ventricle and not sc.safe
    res = search_entries(STN_R, "right", rm)
    assert res.best.safe and not res.best.crosses_ventricle


def test_speed_search_and_rescore(head, risk):
    target = STN_R
    t0 = time.perf_counter()
    search_entries(target, "right", risk)
    assert time.perf_counter() - t0 < 5.0
    entry = standard_trajectory(target, "right", risk)
    t0 = time.perf_counter()
    for k in range(10):
        score_trajectory(target, entry + [k * 0.5, 0, 0], risk, "right")
    assert (time.perf_counter() - t0) / 10 < 0.1


def test_r2star_cue_finds_a_vein_faint_in_chi(head):
    from QSMPlannerLib.planning import r2star_map
    from QSMPlannerLib.io.gre import MultiEchoGRE
    chi = head["chi"]
    ras = chi.voxel_ras_grid()
    a, b = np.array([-30.0, -40.0, 30.0]), np.array([-30.0, 20.0, 35.0])
    faint = _segment_distance(ras.reshape(-1, 3), a, b).reshape(chi.shape3) <= 1.2
    data = chi.data.copy()
    data[faint] += 0.06                                      # under-reconstructed vein: faint in chi
    chi2 = chi.with_data(data)
    te = np.array([0.005, 0.012, 0.019, 0.026])
    r2 = np.where(faint, 60.0, 20.0) * head["brain"].data    # but fast decay (deoxygenated blood)
    mag = 1000.0 * np.exp(-r2[..., None] * te)
    gre = MultiEchoGRE(magnitude=mag.astype(np.float32), phase_rad=np.zeros_like(mag, np.float32), te_s=te,
                       b0_tesla=3.0, ras_from_ijk=chi.ras_from_ijk, b0_dir_ijk=np.array([0.0, 0, 1]))
    r2map = r2star_map(gre, head["brain"])
    assert np.allclose(r2map.data[faint & (head["brain"].data > 0)], 60.0, atol=0.01)
    without = vessel_mask(chi2, head["brain"]).data.astype(bool)
    with_r2 = vessel_mask(chi2, head["brain"], r2star=r2map).data.astype(bool)
    assert without[faint].mean() < 0.05 and with_r2[faint].mean() > 0.5
    assert with_r2[head["vein"]].mean() > 0.6 and not with_r2[head["labels"].data > 0].any()


def test_csf_structures_split_ventricles_and_sulci():
    from QSMPlannerLib.planning import csf_structures
    from QSMPlannerLib.planning.synthetic import synthetic_head
    head = synthetic_head((100, 120, 100), 1.5)
    brain = head["brain"].data > 0
    vent = head["ventricles"].data > 0
    ras = head["brain"].voxel_ras_grid()
    # a sulcus: a CSF slit from the convexity 12 mm deep, at R = 30
    from scipy import ndimage
    depth_in = ndimage.distance_transform_edt(brain, sampling=head["brain"].voxel_mm)
    sulcus = brain & (np.abs(ras[..., 0] - 30) < 1.6) & (depth_in < 12) & (ras[..., 2] > 20)
    rng = np.random.default_rng(0)
    t1 = np.where(brain, 100.0, 0.0)
    t1[vent | sulcus] = 25.0
    t1[brain & ~vent & ~sulcus & (ras[..., 2] < 0)] = 80.0   # grey-ish lower half: a third class
    t1 += rng.normal(0, 3, t1.shape)
    v, s = csf_structures(head["brain"].with_data(t1.astype(np.float32)), head["brain"])
    v, s = v.data > 0, s.data > 0
    assert (v & vent).sum() / vent.sum() > 0.7 and (v & ~vent).sum() < 0.1 * vent.sum()
    assert (s & sulcus).sum() / sulcus.sum() > 0.5 and not (s & vent).any()


def test_target_moved_off_a_vein_next_to_it_when_no_entry_is_safe(head):
    from QSMPlannerLib.planning.plan import plan_both_sides
    lab, brain = head["labels"], head["brain"]
    ras = brain.voxel_ras_grid()
    t = suggest_target(lab, "right")
    # a vein running antero-posteriorly 5.5 mm lateral of the suggested right target: within the
    # microelectrode spread (2 mm + 0.5 mm) + 3 mm of every path to that target, whatever the entry
    p0 = t + np.array([5.5, 0.0, 0.0])
    d = np.hypot(ras[..., 0] - p0[0], ras[..., 2] - p0[2])
    near_vein = (d <= 0.8) & (np.abs(ras[..., 1] - p0[1]) <= 15)
    vessels = brain.with_data((head["vein"] | near_vein).astype(np.uint8))
    rm = RiskMap.from_masks(vessels=vessels, brain=brain)
    before = search_entries(t, "right", rm)
    assert not before.feasible                              # no entry helps at that target
    sides = plan_both_sides(lab, rm)
    right, left = sides["right"], sides["left"]
    adj = right.plan["target_adjustment"]
    assert adj is not None and 0.5 <= adj["shift_mm"] <= 2.5 and "moved" in right.plan["statement"]
    ijk = np.rint(lab.ras_to_ijk(right.target_ras)).astype(int)
    assert lab.data[tuple(ijk)] == 2                          # still in the right STN
    assert right.search.feasible and right.chosen.safe
    vein_pts = brain.ijk_to_ras(np.argwhere(near_vein).astype(float))
    for c in right.search.candidates:
        assert c.safe and c.vessel_clearance_mm >= 3.0
        assert np.linalg.norm(vein_pts - c.target_ras, axis=1).min() >= 3.0 + 2.5 - 0.5  # voxel centres
    assert left.plan["target_adjustment"] is None             # nothing next to the left target
    # a surgeon's target is never moved: scored, reported unsafe
    kept = plan_both_sides(lab, rm, targets={"right": t})["right"]
    assert kept.plan["target_adjustment"] is None and np.allclose(kept.target_ras, t)
    assert not kept.chosen.safe
