"""The coordinate table of a plan document, the one source of plan.csv, the report's table and the Slicer
table node. Every column names its coordinate system; the frame's columns are those of the frame that was
registered (Leksell G: X, Y, Z with ring/arc and mounting; CRW, BRW: LAT, AP, VERT)."""
from __future__ import annotations

import csv
import io

POINT_COLUMNS = ["side", "point", "R_RAS_mm", "A_RAS_mm", "S_RAS_mm", "x_ACPC_mm", "y_ACPC_mm", "z_ACPC_mm"]
SAFETY_COLUMNS = ["vessel_clearance_mm", "safe"]
LEKSELL = {"key": "leksell", "name": "Leksell", "axes": ("X", "Y", "Z"), "point_key": "LeksellXYZ_mm"}


def frame_of(plan: dict) -> dict:
    """The frame of the plan's coordinates: {"key", "name", "axes", "point_key"} (Leksell G when none)."""
    for sp in (plan.get("sides") or {}).values():
        frame = sp.get("frame") or {}
        key = frame.get("system_key")
        if key and key != "leksell":
            name = frame.get("system", key.upper())
            return {"key": key, "name": name, "axes": ("LAT", "AP", "VERT"), "point_key": f"{name}_mm"}
    return LEKSELL


def frame_columns(frame: dict) -> list:
    axes = [f"{a}_{frame['name']}_mm" for a in frame["axes"]]
    return axes + (["ring_deg", "arc_deg", "mounting"] if frame["key"] == "leksell" else [])


def columns(plan: dict) -> list:
    return POINT_COLUMNS + frame_columns(frame_of(plan)) + SAFETY_COLUMNS


def _three(values):
    if isinstance(values, dict):
        values = [values.get(a) for a in ("LAT", "AP", "VERT")]
    return list(values) if values else [None] * 3


def coordinate_table(plan: dict, landmarks: bool = False) -> list[dict]:
    """Rows {column: value} (``columns``): target and entry of each side (the frame settings on the target
    row), after the AC/PC/MS landmarks when ``landmarks``. Missing values are None."""
    frame = frame_of(plan)
    cols = columns(plan)
    leksell = frame["key"] == "leksell"
    rows = []
    if landmarks:
        for name, ras in (plan.get("landmarks_RAS_mm") or {}).items():
            acpc = (plan.get("landmarks_ACPC_mm") or {}).get(name)
            native = (plan.get("landmarks_frame_mm") or {}).get(name)
            # never an empty first cell: Slicer's table reader drops a leading empty field
            values = ["midline", name, *_three(ras), *_three(acpc), *_three(native)]
            rows.append(dict(zip(cols, values + [None] * (len(cols) - len(values)))))
    for side, sp in (plan.get("sides") or {}).items():
        settings = sp.get("frame") or {}
        safety = sp.get("safety") or {}
        for point in ("target", "entry"):
            p = sp.get(point) or {}
            on_target = point == "target" and bool(settings)
            row = [side, point, *_three(p.get("RAS_mm")), *_three(p.get("ACPC_mm")), *_three(p.get(frame["point_key"]))]
            if leksell:
                row += [settings.get("ring_deg") if on_target else None, settings.get("arc_deg") if on_target else None,
                        settings.get("mounting") if on_target else None]
            row += [safety.get("vessel_clearance_mm"), safety.get("safe")]
            rows.append(dict(zip(cols, row)))
    return rows


def plan_csv_text(plan: dict) -> str:
    """plan.csv: ``coordinate_table`` with numbers to 3 decimals and empty cells for missing values."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns(plan))
    for row in coordinate_table(plan):
        w.writerow(["" if v is None else (f"{v:.3f}" if isinstance(v, float) else v) for v in row.values()])
    return buf.getvalue()
