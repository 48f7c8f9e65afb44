"""Frame systems (Leksell G, CRW, BRW): localizer geometry, Brown's formula and native coordinates against
worked examples computed by hand from the published geometry (docs/frames.md), not from the code."""
import json

import numpy as np
import pytest

from QSMPlannerLib.errors import InputError
from QSMPlannerLib.stereotaxy import (SYSTEMS, frame_readout, get_system, plan_to_dict, register_frame_manual,
                                      ring_arc)
from QSMPlannerLib.stereotaxy.frames import diagonal_point

# Rods as the docs' table gives them, frame RAS mm (R, A, S): (first rod, second rod, diagonal from, to)
TABLE = {
    "crw": {"right": ((100, 60), (100, -60), (100, 60, 60), (100, -60, -60)),
            "left": ((-100, -60), (-100, 60), (-100, -60, 60), (-100, 60, -60)),
            "anterior": ((-60, 105), (60, 105), (-60, 105, 60), (60, 105, -60))},
    "brw": {"posterior": ((70, -121.25), (-70, -121.25), (70, -121.25, 103), (-70, -121.25, -86)),
            "right-anterior": ((70, 121.25), (140, 0), (70, 121.25, 103), (140, 0, -86)),
            "left-anterior": ((-140, 0), (-70, 121.25), (-140, 0, 103), (-70, 121.25, -86))},
    "leksell": {"right": ((95, -60), (95, 60), (95, -60, 60), (95, 60, -60)),
                "left": ((-95, -60), (-95, 60), (-95, -60, 60), (-95, 60, -60)),
                "anterior": ((60, 115), (-60, 115), (60, 115, 60), (-60, 115, -60))},
}
HEIGHT = {"leksell": (-60, 60), "crw": (-60, 60), "brw": (-86, 103)}


@pytest.mark.parametrize("key", ["leksell", "crw", "brw"])
def test_localizer_geometry_matches_the_table(key):
    system = get_system(key)
    lo, hi = HEIGHT[key]
    for plate, (first, second, d0, d1) in TABLE[key].items():
        rods = system.plates[plate].rods()
        assert sorted(map(tuple, rods[0])) == sorted([(*first, lo), (*first, hi)])
        assert sorted(map(tuple, rods[2])) == sorted([(*second, lo), (*second, hi)])
        assert [tuple(p) for p in rods[1]] == [d0, d1]
    assert system.rod_height_mm == hi - lo


def test_brw_rods_on_a_140_mm_circle_and_symmetric():
    rods = [np.array(p[:2]) for plate in TABLE["brw"].values() for p in plate[:2]]
    assert np.allclose([np.hypot(*r) for r in rods], 140.0, atol=0.01)     # 121.25 ~ 140 sin 60 = 121.24
    # each plate is the next turned by 120 degrees about VERT (why the image axes break the tie)
    c, s = np.cos(np.radians(120)), np.sin(np.radians(120))
    turn = np.array([[c, -s], [s, c]])
    firsts = {k: np.array(v[0], float) for k, v in TABLE["brw"].items()}
    assert np.allclose(turn @ firsts["right-anterior"], firsts["left-anterior"], atol=0.01)
    assert np.allclose(turn @ firsts["left-anterior"], firsts["posterior"], atol=0.01)


def test_names_and_native_axes():
    assert [SYSTEMS[k].name for k in ("leksell", "crw", "brw")] == ["Leksell G", "CRW", "BRW"]
    assert get_system("Leksell").key == "leksell" and get_system("BRW").native_axes == ("LAT", "AP", "VERT")
    with pytest.raises(InputError):
        get_system("zamorano")


# ---- Brown's formula, worked by hand -----------------------------------------------------------------
def test_brown_formula_worked_examples():
    # CRW right plate, VERT 30: the diagonal runs from (100, 60, 60) to (100, -60, -60), so at S = 30 it is
    # a quarter of the way: AP 60 - 0.25 * 120 = 30; rods at AP 60 (first) and -60 (second):
    # f = |b - a| / |c - a| = 30 / 120 = 0.25
    assert np.allclose(diagonal_point(get_system("crw").plates["right"], 0.25), [100.0, 30.0, 30.0])
    # BRW posterior plate, VERT 0: t = 103 / 189 = 0.544974 of the way from (70, -121.25, 103) to
    # (-70, -121.25, -86): LAT 70 - 140 t = -6.2963; f = (70 + 6.2963) / 140 = 0.544974
    assert np.allclose(diagonal_point(get_system("brw").plates["posterior"], 0.544974),
                       [-6.2963, -121.25, 0.0], atol=1e-3)
    # Leksell G anterior plate, Z 100 (S 0): from X 40 (R 60) halfway to X 160 (R -60): R 0, A 115
    assert np.allclose(diagonal_point(get_system("leksell").plates["anterior"], 0.5), [0.0, 115.0, 0.0])


# ---- native coordinates, worked by hand ----------------------------------------------------------------
# The frame turned 90 degrees about S (its R axis along the image's A) and moved by (10, -20, 5):
# image = (-A, R, S) + (10, -20, 5); so frame RAS (12, -2.5, -4) is image (12.5, -8, 1) and
# frame RAS (35, 30, 60) is image (-20, 15, 65).
IMAGE_FROM_FRAME = np.array([[0.0, -1, 0, 10], [1, 0, 0, -20], [0, 0, 1, 5], [0, 0, 0, 1]])
TARGET_IMAGE, TARGET_FRAME = np.array([12.5, -8.0, 1.0]), np.array([12.0, -2.5, -4.0])
ENTRY_IMAGE, ENTRY_FRAME = np.array([-20.0, 15.0, 65.0]), np.array([35.0, 30.0, 60.0])


def _clicks(key, heights=(-30.0, 0.0, 30.0)):
    """Exact rod crossings on axial frame slices, from the table and Brown's construction, in the image."""
    out = {}
    for plate, (first, second, d0, d1) in TABLE[key].items():
        rows = []
        for s in heights:
            t = (d0[2] - s) / (d0[2] - d1[2])
            a, c = np.array([*first, s]), np.array([*second, s])
            b = np.array(d0, float) + t * (np.array(d1, float) - np.array(d0, float))
            rows.append(tuple((IMAGE_FROM_FRAME @ np.r_[p, 1.0])[:3] for p in (a, b, c)))
        out[plate] = rows
    return out


@pytest.mark.parametrize("key, expected", [
    ("crw", {"LAT": 12.0, "AP": -2.5, "VERT": -4.0}),
    ("brw", {"LAT": 12.0, "AP": -2.5, "VERT": -4.0}),
    # Leksell: X = 100 - R = 88, Y = A + 100 = 97.5, Z = 100 - S = 104
    ("leksell", {"X": 88.0, "Y": 97.5, "Z": 104.0}),
])
def test_native_coordinates_worked_example(key, expected):
    reg = register_frame_manual(_clicks(key), system=key)
    assert reg.fre_mm < 1e-6 and reg.system == key
    native = reg.xyz_from_ras @ np.r_[TARGET_IMAGE, 1.0]
    assert dict(zip(get_system(key).native_axes, native[:3])) == pytest.approx(expected, abs=0.01)
    assert np.allclose(reg.image_from_frame, IMAGE_FROM_FRAME, atol=1e-9)
    assert reg.to_dict(target_ras=TARGET_IMAGE)["target"]["frame"] == pytest.approx(expected, abs=0.01)


def test_crw_readout_worked_example():
    reg = register_frame_manual(_clicks("crw"), system="crw")
    out = frame_readout(TARGET_IMAGE, ENTRY_IMAGE, reg.xyz_from_ras, "crw")
    assert out["system"] == "CRW"
    assert out["target"] == pytest.approx({"LAT": 12.0, "AP": -2.5, "VERT": -4.0}, abs=0.01)
    assert out["entry"] == pytest.approx({"LAT": 35.0, "AP": 30.0, "VERT": 60.0}, abs=0.01)
    assert {k: out["phantom_base"][k] for k in ("AP", "LAT", "VERT")} == pytest.approx(
        {"AP": -2.5, "LAT": 12.0, "VERT": -4.0}, abs=0.01)
    # entry - target = (23, 32.5, 64), length sqrt(529 + 1056.25 + 4096) = 75.3741
    assert [out["direction_frame"][k] for k in ("LAT", "AP", "VERT")] == pytest.approx(
        [0.30514, 0.43118, 0.84910], abs=1e-4)
    assert out["arc_settings"]["provided"] is False and "ring_deg" not in out


def test_leksell_readout_worked_example():
    # the shared notes' worked example: target (88, 97.5, 104), entry (63, 142, 40) Leksell XYZ:
    # lateral-right ring 55.1886, arc 72.2181; in frame RAS target (12, -2.5, -4), entry (37, 42, 60)
    reg = register_frame_manual(_clicks("leksell"), system="leksell")
    entry_image = (IMAGE_FROM_FRAME @ np.array([37.0, 42.0, 60.0, 1.0]))[:3]
    out = frame_readout(TARGET_IMAGE, entry_image, reg.xyz_from_ras, "leksell")
    assert out["target"] == pytest.approx([88.0, 97.5, 104.0], abs=0.01)
    assert (out["ring_deg"], out["arc_deg"]) == pytest.approx((55.1886, 72.2181), abs=0.01)
    assert out["all_mountings"]["lateral-left"]["ring_deg"] == pytest.approx(124.8114, abs=0.01)


@pytest.mark.parametrize("key", ["crw", "brw"])
def test_plan_names_the_frame(key):
    reg = register_frame_manual(_clicks(key), system=key)
    d = json.loads(json.dumps(plan_to_dict(TARGET_IMAGE, ENTRY_IMAGE, reg.xyz_from_ras, system=key)))
    name = get_system(key).name
    assert d["frame"]["system"] == name and name in d["coordinate_systems"]
    assert d["target"][f"{name}_mm"] == pytest.approx({"LAT": 12.0, "AP": -2.5, "VERT": -4.0}, abs=0.01)
    assert "LeksellXYZ_mm" not in d["target"]
    tracks = d["mer_tracks"]["tracks"]
    assert "frame axes" in d["mer_tracks"]["axes_from"]
    # right hemisphere (LAT +12): lateral is +LAT, anterior +AP; 2 mm off the central track
    lat = tracks["lateral"]["target"][f"{name}_mm"]
    ant = tracks["anterior"]["target"][f"{name}_mm"]
    assert lat["LAT"] > 12.0 + 1.0 and ant["AP"] > -2.5 + 1.0
    for tr in tracks.values():
        off = np.array(tr["target"]["RAS_mm"]) - TARGET_IMAGE
        assert np.linalg.norm(off) == pytest.approx(0.0, abs=1e-9) or np.linalg.norm(off) == pytest.approx(2.0)


def test_ring_arc_unchanged_for_leksell():
    r = ring_arc([88, 97.5, 104], [63, 142, 40], "lateral-right")
    assert (r.ring_deg, r.arc_deg) == pytest.approx((55.1886, 72.2181), abs=1e-4)
