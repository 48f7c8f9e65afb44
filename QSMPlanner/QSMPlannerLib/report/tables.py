"""The coordinate table of a plan document, the one source of plan.csv, the report's table and the Slicer
table node. Every column names its coordinate system."""
from __future__ import annotations

import csv
import io

COLUMNS = ["side", "point", "R_RAS_mm", "A_RAS_mm", "S_RAS_mm", "x_ACPC_mm", "y_ACPC_mm", "z_ACPC_mm",
           "X_Leksell_mm", "Y_Leksell_mm", "Z_Leksell_mm", "ring_deg", "arc_deg", "mounting",
           "vessel_clearance_mm", "safe"]


def _three(values):
    return list(values) if values else [None] * 3


def coordinate_table(plan: dict, landmarks: bool = False) -> list[dict]:
    """Rows {column: value} (``COLUMNS``): target and entry of each side (ring/arc and safety on the target
    row), after the AC/PC/MS landmarks when ``landmarks``. Missing values are None."""
    rows = []
    if landmarks:
        for name, ras in (plan.get("landmarks_RAS_mm") or {}).items():
            acpc = (plan.get("landmarks_ACPC_mm") or {}).get(name)
            xyz = (plan.get("landmarks_LeksellXYZ_mm") or {}).get(name)
            # never an empty first cell: Slicer's table reader drops a leading empty field
            rows.append(dict(zip(COLUMNS, ["midline", name, *_three(ras), *_three(acpc), *_three(xyz)]
                                 + [None] * 5)))
    for side, sp in (plan.get("sides") or {}).items():
        frame = sp.get("frame") or {}
        safety = sp.get("safety") or {}
        for point in ("target", "entry"):
            p = sp.get(point) or {}
            on_target = point == "target"
            row = [side, point, *_three(p.get("RAS_mm")), *_three(p.get("ACPC_mm")), *_three(p.get("LeksellXYZ_mm")),
                   frame.get("ring_deg") if on_target and frame else None,
                   frame.get("arc_deg") if on_target and frame else None,
                   frame.get("mounting") if on_target and frame else None,
                   safety.get("vessel_clearance_mm"), safety.get("safe")]
            rows.append(dict(zip(COLUMNS, row)))
    return rows


def plan_csv_text(plan: dict) -> str:
    """plan.csv: ``coordinate_table`` with numbers to 3 decimals and empty cells for missing values."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    for row in coordinate_table(plan):
        w.writerow(["" if v is None else (f"{v:.3f}" if isinstance(v, float) else v) for v in row.values()])
    return buf.getvalue()
