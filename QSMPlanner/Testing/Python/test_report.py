"""The HTML planning report: self-contained, pictures inlined, coordinate tables naming their systems,
and the safety statement (standard trajectory flagged, suggestions safe) on a synthetic head."""
import base64
import re

import numpy as np
import pytest

from QSMPlannerLib.planning import RiskMap, vessel_mask
from QSMPlannerLib.planning.plan import plan_both_sides
from QSMPlannerLib.planning.synthetic import synthetic_head
from QSMPlannerLib.report import coordinate_rows, write_report


@pytest.fixture(scope="module")
def planned():
    head = synthetic_head((120, 150, 120), 1.0)
    vm = vessel_mask(head["chi"], head["brain"], exclude=head["labels"].data > 0)
    rm = RiskMap.from_masks(vessels=vm, ventricles=head["ventricles"], brain=head["brain"])
    landmarks = {"AC": np.array([0.0, 12.0, 0.0]), "PC": np.array([0.0, -13.0, 0.0]),
                 "MS": np.array([0.0, 0.0, 40.0])}
    # frame: Leksell XYZ from RAS = the standard frame-centre matrix with a small shift
    xyz_from_ras = np.array([[-1.0, 0, 0, 100.0], [0, 1, 0, 100.0], [0, 0, -1, 100.0], [0, 0, 0, 1]])
    xyz_from_ras[:3, 3] += [1.5, -2.0, 3.0]
    sides = plan_both_sides(head["labels"], rm, landmarks=landmarks, xyz_from_world=xyz_from_ras)
    return head, vm, sides, landmarks, xyz_from_ras


def test_plan_coordinates_are_consistent(planned):
    head, vm, sides, lm, xyz_from_ras = planned
    for side, sp in sides.items():
        d = sp.plan
        t = np.array(d["target"]["RAS_mm"])
        np.testing.assert_allclose(d["target"]["LeksellXYZ_mm"], xyz_from_ras[:3, :3] @ t + xyz_from_ras[:3, 3])
        # AC-PC: MCP at (0, -0.5, 0), axes = RAS here
        np.testing.assert_allclose(d["target"]["ACPC_mm"], t - [0, -0.5, 0], atol=1e-9)
        assert d["safety"]["safe"] and d["safety"]["vessel_clearance_mm"] >= 3.0
        assert d["standard"]["safe"] is False
        assert d["electrode"]["contacts_in_target"] >= 1
        if d.get("frame"):
            assert d["frame"]["mounting"] == "lateral-right"


def test_report_is_self_contained_with_pictures_and_tables(planned, tmp_path):
    head, vm, sides, lm, xyz_from_ras = planned
    plan = {"sides": {s: sp.plan for s, sp in sides.items()}, "landmarks_RAS_mm": {k: list(v) for k, v in lm.items()},
            "timings_s": {"planning": 1.0}}
    out = tmp_path / "report.html"
    write_report(out, plan, qsm=head["chi"], labels=head["labels"], vessels=vm,
                 searches={s: sp.search for s, sp in sides.items()},
                 chosen={s: sp.chosen for s, sp in sides.items()})
    text = out.read_text()
    assert "src=\"http" not in text and "<link" not in text and "<script" not in text
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) >= 11   # per side: ortho, probe, in-line, profile, map; + 3-D
    for b in imgs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    for header in ("R (RAS mm)", "lateral (AC-PC mm)", "X (Leksell mm)", "ring (deg)", "mounting"):
        assert header in text
    assert "FLAGGED" in text and "every suggested trajectory shown does" in text
    # the table carries the plan's numbers
    h, rows = coordinate_rows(plan)
    t = sides["left"].plan["target"]["LeksellXYZ_mm"]
    assert f"{t[0]:.2f}" in text and rows[0][h.index("X (Leksell mm)")] == f"{t[0]:.2f}"
    # the README picture is composed from this file's own pictures and statements
    from PIL import Image
    from QSMPlannerLib.report.composite import report_composite, report_images, report_statements
    assert [s for s, _ in report_statements(text)] == list(sides)
    pics = report_images(text)
    assert len(pics) == len(imgs) and pics[0][1].ndim == 3
    png = report_composite(out, tmp_path / "report.png", width_px=900)
    im = np.asarray(Image.open(png).convert("RGB"))
    assert im.shape[1] == 900 and im.shape[0] > 900
    assert (im.std(axis=(0, 1)) > 20).all()   # pictures drawn, not a blank page


def test_report_without_images(tmp_path):
    plan = {"sides": {"left": {"target": {"RAS_mm": [-12.0, -3.0, -5.0]}, "entry": {"RAS_mm": [-30.0, 30.0, 50.0]},
                               "statement": "x"}}}
    out = write_report(tmp_path / "r.html", plan)
    text = out.read_text()
    assert "-12.00" in text and "data:image/png" not in text and "Registrations" not in text
    plan["registration_qc"] = {"gre_to_t1": {"summary": "restarts end 0.08 mm apart", "seconds": 3.0},
                               "ct_to_t1": {"given": True}}
    text = write_report(tmp_path / "r.html", plan).read_text()
    assert '<td class="l">GRE -&gt; T1</td><td class="">restarts end 0.08 mm apart</td>' in text
    assert '<td class="l">CT -&gt; T1</td><td class="">given by the user</td>' in text


def test_surgeon_overrides_are_scored(planned):
    from QSMPlannerLib.planning.trajectory import direction_from_angles
    head, vm, sides, lm, xyz_from_ras = planned
    rm = RiskMap.from_masks(vessels=vm, brain=head["brain"])
    target = np.array([13.0, -3.0, -5.0])
    entry = target + 70 * direction_from_angles(60.0, 20.0, "right")   # through the planted vein
    out = plan_both_sides(head["labels"], rm, landmarks=lm, targets={"right": target}, entries={"right": entry})
    r = out["right"]
    np.testing.assert_allclose(r.target_ras, target)
    np.testing.assert_allclose(r.chosen.entry_ras, entry)
    assert r.chosen.label == "surgeon's entry" and not r.plan["safety"]["safe"]
    assert out["left"].plan["safety"]["safe"]        # the other side keeps its suggestion
