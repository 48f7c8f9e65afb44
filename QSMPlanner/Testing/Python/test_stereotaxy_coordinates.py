"""Leksell XYZ, ring/arc for every mounting, AC-PC coordinates, MER tracks, the plan dict."""
import json

import numpy as np
import pytest

from QSMPlannerLib.errors import InputError
from QSMPlannerLib.stereotaxy import (MOUNTINGS, acpc_coordinates, acpc_readout, direction_from_ring_arc,
                                      mer_tracks, plan_to_dict, ras_to_xyz, ring_arc,
                                      trajectory_from_ring_arc, xyz_to_ras)
from QSMPlannerLib.volume import rotation_matrix


def _random_rigid(rng):
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(rng.uniform(-30, 30, 3))
    m[:3, 3] = rng.uniform(-50, 50, 3)
    return m


# ---- RAS <-> XYZ --------------------------------------------------------------------------------
def test_xyz_axes_and_centre():
    # frame-aligned RAS with origin at the frame centre: R = 100 - X, A = Y - 100, S = 100 - Z
    assert np.allclose(ras_to_xyz([0, 0, 0]), [100, 100, 100])
    assert np.allclose(ras_to_xyz([-30, 0, 0]), [130, 100, 100])      # patient's left -> X larger
    assert np.allclose(ras_to_xyz([0, 20, 0]), [100, 120, 100])       # anterior -> Y larger
    assert np.allclose(ras_to_xyz([0, 0, 25]), [100, 100, 75])        # superior -> Z smaller
    assert np.allclose(xyz_to_ras([5, 40, 40]), [95, -60, 60])        # right plate, posterior rod top


def test_ras_xyz_round_trip_with_pose(rng):
    for _ in range(5):
        xyz_from_ras = _random_rigid(rng)
        p = rng.uniform(-100, 100, (20, 3))
        assert np.allclose(xyz_to_ras(ras_to_xyz(p, xyz_from_ras), xyz_from_ras), p, atol=1e-9)


# ---- ring / arc -----------------------------------------------------------------------------------
WORKED = [  # target, entry, L, (ring, arc) right, (ring, arc) left  (shared notes, stereotaxy.md)
    ((100, 100, 100), (100, 100, 40), 60.0, (90, 90), (90, 90)),
    ((88, 97.5, 104), (63, 142, 40), 81.8612, (55.1886, 72.2181), (124.8114, 107.7819)),
    ((100, 100, 100), (100, 70, 45), 62.6498, (118.6105, 90), (61.3895, 90)),
]


@pytest.mark.parametrize("target, entry, length, right, left", WORKED)
def test_worked_examples(target, entry, length, right, left):
    r = ring_arc(target, entry, "lateral-right")
    lft = ring_arc(target, entry, "lateral-left")
    assert r.length_mm == pytest.approx(length, abs=1e-4)
    assert (r.ring_deg, r.arc_deg) == pytest.approx(right, abs=1e-4)
    assert (lft.ring_deg, lft.arc_deg) == pytest.approx(left, abs=1e-4)
    assert r.mounting == "lateral-right" and lft.mounting == "lateral-left"
    ring, arc = r                       # unpacks as a pair
    assert (ring, arc) == (r.ring_deg, r.arc_deg)


def test_lateral_right_meaning():
    t = np.array([110.0, 100.0, 100.0])
    # arc < 90 -> entry toward the patient's right (smaller X); ring < 90 -> entry anterior (larger Y)
    e = trajectory_from_ring_arc(t, 60.0, 70.0, "lateral-right", 80.0)
    assert e[0] < t[0] and e[1] > t[1] and e[2] < t[2]
    e = trajectory_from_ring_arc(t, 120.0, 110.0, "lateral-right", 80.0)
    assert e[0] > t[0] and e[1] < t[1] and e[2] < t[2]


def test_sagittal_hand_examples():
    t = np.array([100.0, 100.0, 100.0])
    up = t + [0, 0, -50]                  # straight superior
    ant_up = t + [0, 30, -30]             # anterior and superior, 45 degrees
    right = t + [-40, 0, 0]               # toward the patient's right
    sa = {n: ring_arc(t, e, "sagittal-anterior") for n, e in (("up", up), ("ant", ant_up), ("right", right))}
    assert (sa["up"].ring_deg, sa["up"].arc_deg) == pytest.approx((90, 90))
    assert (sa["ant"].ring_deg, sa["ant"].arc_deg) == pytest.approx((90, 45))
    assert (sa["right"].ring_deg, sa["right"].arc_deg) == pytest.approx((180, 90))
    sp = ring_arc(t, ant_up, "sagittal-posterior")
    assert (sp.ring_deg, sp.arc_deg) == pytest.approx((90, 135))
    sp = ring_arc(t, right, "sagittal-posterior")
    assert (sp.ring_deg, sp.arc_deg) == pytest.approx((0, 90))


@pytest.mark.parametrize("mounting", MOUNTINGS)
def test_round_trips(mounting, rng):
    for _ in range(50):
        ring, arc = rng.uniform(5, 175), rng.uniform(5, 175)
        target = rng.uniform(60, 140, 3)
        length = rng.uniform(30, 190)
        entry = trajectory_from_ring_arc(target, ring, arc, mounting, length)
        assert np.linalg.norm(entry - target) == pytest.approx(length)
        ra = ring_arc(target, entry, mounting)
        assert (ra.ring_deg, ra.arc_deg) == pytest.approx((ring, arc), abs=1e-6)
        # and trajectory -> angles -> trajectory
        e2 = trajectory_from_ring_arc(target, ra.ring_deg, ra.arc_deg, mounting, ra.length_mm)
        assert np.allclose(e2, entry, atol=1e-6)


def test_mounting_symmetries(rng):
    for _ in range(50):
        t = rng.uniform(70, 130, 3)
        e = t + rng.normal(size=3) * 40 + [0, 0, -40]
        r, l_ = ring_arc(t, e, "lateral-right"), ring_arc(t, e, "lateral-left")
        assert l_.ring_deg == pytest.approx(180 - r.ring_deg, abs=1e-9) or \
            abs(((l_.ring_deg - (180 - r.ring_deg)) + 180) % 360 - 180) < 1e-9
        assert l_.arc_deg == pytest.approx(180 - r.arc_deg, abs=1e-9)
        a, p = ring_arc(t, e, "sagittal-anterior"), ring_arc(t, e, "sagittal-posterior")
        assert p.arc_deg == pytest.approx(180 - a.arc_deg, abs=1e-9)
        assert abs(((p.ring_deg - (180 - a.ring_deg)) + 180) % 360 - 180) < 1e-9


def test_rotation_order_matters():
    # ring 65 / arc 70: the direction is exactly the tabulated formula, not a composition in the
    # other order (which would be off by ~2.35 degrees)
    u = direction_from_ring_arc(65, 70, "lateral-right")
    r, a = np.deg2rad(65), np.deg2rad(70)
    assert np.allclose(u, [-np.cos(a), np.sin(a) * np.cos(r), -np.sin(a) * np.sin(r)])
    # composing "arc about the ring axis X" after "ring about X" differently
    rx = lambda t: np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])  # noqa
    rz = lambda t: np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])  # noqa
    wrong = rz(a - np.pi / 2) @ rx(-r) @ np.array([0.0, 1.0, 0.0])
    assert np.degrees(np.arccos(np.clip(wrong @ u, -1, 1))) > 1.0


def test_bad_mounting_and_degenerate():
    with pytest.raises(InputError):
        ring_arc([100, 100, 100], [100, 100, 40], "oblique")
    with pytest.raises(InputError):
        ring_arc([100, 100, 100], [100, 100, 100])


# ---- AC-PC --------------------------------------------------------------------------------------
def test_acpc_worked_example():
    ac, pc, ms = np.array([0.0, 12.0, 0.0]), np.array([0.0, -12.0, 0.0]), np.array([0.0, 0.0, 40.0])
    assert np.allclose(acpc_coordinates([12.0, -2.5, -6.0], ac, pc, ms), [12.0, -2.5, -6.0])
    assert np.allclose(acpc_coordinates(ac, ac, pc, ms), [0, 12, 0])
    left = acpc_coordinates([-13.0, -4.0, -5.0], ac, pc, ms)
    ro = acpc_readout(left)
    assert ro == {"lateral_mm": 13.0, "side": "left", "ap_mm": -4.0, "vertical_mm": -5.0}
    # tilted AC-PC line (pitched 10 degrees): a point along the line 10 mm anterior of the MCP
    th = np.deg2rad(10)
    ac2 = np.array([5.0, 12 * np.cos(th), 12 * np.sin(th)])
    pc2 = np.array([5.0, -12 * np.cos(th), -12 * np.sin(th)])
    ms2 = np.array([5.0, -40 * np.sin(th), 40 * np.cos(th)])
    p = np.array([5.0 + 3.0, 10 * np.cos(th), 10 * np.sin(th)])
    assert np.allclose(acpc_coordinates(p, ac2, pc2, ms2), [3.0, 10.0, 0.0])


def test_acpc_rigid_invariance(rng):
    ac, pc, ms = np.array([1.0, 13.0, -2.0]), np.array([0.5, -11.0, 1.0]), np.array([0.0, 5.0, 45.0])
    pts = rng.uniform(-40, 40, (30, 3))
    ref = acpc_coordinates(pts, ac, pc, ms)
    for _ in range(10):
        m = _random_rigid(rng)
        mv = lambda p: p @ m[:3, :3].T + m[:3, 3]  # noqa
        assert np.allclose(acpc_coordinates(mv(pts), mv(ac), mv(pc), mv(ms)), ref, atol=1e-9)
    with pytest.raises(InputError):
        acpc_coordinates(pts, ac, pc, (ac + pc) / 2)


# ---- MER tracks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mounting", MOUNTINGS)
@pytest.mark.parametrize("side", ["right", "left"])
def test_mer_tracks(mounting, side, rng):
    sign = 1.0 if side == "right" else -1.0
    target = np.array([sign * 12.0, -3.0, -5.0])              # frame RAS (no frame given)
    entry = target + np.array([sign * 25.0, 45.0, 60.0])
    tracks = mer_tracks(target, entry, spacing_mm=2.0, pattern="cross", mounting=mounting)
    assert set(tracks) == {"central", "anterior", "posterior", "medial", "lateral"}
    u = (entry - target) / np.linalg.norm(entry - target)
    for name, tr in tracks.items():
        off_t, off_e = tr["target_ras"] - target, tr["entry_ras"] - entry
        assert np.allclose(off_t, off_e)                         # parallel
        assert abs(off_t @ u) < 1e-9                             # perpendicular offset
        assert np.linalg.norm(off_t) == pytest.approx(0.0 if name == "central" else 2.0)
    assert abs(tracks["lateral"]["target_ras"][0]) > abs(tracks["medial"]["target_ras"][0]) + 1.0
    assert tracks["anterior"]["target_ras"][1] > tracks["posterior"]["target_ras"][1] + 1.0
    grid = mer_tracks(target, entry, spacing_mm=3.0, pattern="grid", mounting=mounting)
    assert len(grid) == 9
    d = np.linalg.norm(grid["anterior-lateral"]["target_ras"] - target)
    assert d == pytest.approx(3.0 * np.sqrt(2))


def test_mer_axes_follow_the_arc():
    # vertical trajectory on lateral-right: d u / d arc is along X, so medial/lateral are pure X offsets
    t = np.array([-12.0, 0.0, 0.0])                  # left hemisphere in frame RAS
    tracks = mer_tracks(t, t + [0, 0, 60], mounting="lateral-right")
    assert np.allclose(tracks["lateral"]["target_ras"], t + [-2, 0, 0])
    assert np.allclose(tracks["anterior"]["target_ras"], t + [0, 2, 0])


# ---- plan dict -----------------------------------------------------------------------------------
def test_plan_to_dict(rng):
    xyz_from_ras = _random_rigid(rng)
    xyz_from_ras[:3, 3] += 100
    t, e = np.array([12.0, -3.0, -5.0]), np.array([35.0, 40.0, 60.0])
    lm = {"AC": [0, 12, 0], "PC": [0, -12, 0], "MS": [0, 0, 40]}
    d = plan_to_dict(t, e, xyz_from_ras, "lateral-left", lm)
    d = json.loads(json.dumps(d))
    assert d["target"]["RAS_mm"] == pytest.approx(t)
    assert d["target"]["LPS_mm"] == pytest.approx([-12.0, 3.0, -5.0])
    assert d["entry"]["LeksellXYZ_mm"] == pytest.approx(ras_to_xyz(e, xyz_from_ras))
    assert d["target"]["ACPC_mm"] == pytest.approx(t)
    assert d["length_mm"] == pytest.approx(np.linalg.norm(e - t))
    ra = ring_arc(ras_to_xyz(t, xyz_from_ras), ras_to_xyz(e, xyz_from_ras), "lateral-left")
    assert d["frame"]["mounting"] == "lateral-left"
    assert (d["frame"]["ring_deg"], d["frame"]["arc_deg"]) == pytest.approx((ra.ring_deg, ra.arc_deg))
    assert set(d["mer_tracks"]["tracks"]) == {"central", "anterior", "posterior", "medial", "lateral"}
    assert "LeksellXYZ_mm" in d["mer_tracks"]["tracks"]["medial"]["target"]
    assert set(d["coordinate_systems"]) >= {"RAS", "LPS", "LeksellXYZ", "ACPC"}
    bare = plan_to_dict(t, e)
    assert bare["frame"] is None and "LeksellXYZ_mm" not in bare["target"] and "ACPC_mm" not in bare["target"]
