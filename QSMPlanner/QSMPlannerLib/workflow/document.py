"""The plan document (plan.json) and its companions (plan.csv, report.html): one schema and one writer
for the command line and the Slicer panel."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io.atomic import write_text
from ..stereotaxy.plan import COORDINATE_SYSTEMS
from ..volume import apply
from .settings import PlanSettings

SCHEMA = "qsmplanner-plan/2"


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def _matrix(m):
    return None if m is None else np.asarray(m, float).tolist()


def plan_document(sides: dict, settings: PlanSettings, landmarks: dict | None, landmarks_source: str,
                  t1_from_gre=None, t1_from_ct=None, xyz_from_t1=None, frame=None,
                  registration_qc: dict | None = None, messages: list | None = None,
                  timings: dict | None = None, frame_system: str | None = None) -> dict:
    """The plan as a JSON-ready dict. ``sides``: {side: SidePlan}; transforms are RAS 4x4 into the planning
    T1 (``xyz_from_t1``: T1 RAS -> the native coordinates of ``frame_system``, the frame on the CT);
    ``frame``: the FrameRegistration (or None when the pose was given or there is no CT)."""
    from ..stereotaxy import get_system
    from ..stereotaxy import acpc_coordinates
    lm = {k: [float(x) for x in v] for k, v in (landmarks or {}).items()}
    doc = {
        "schema": SCHEMA, "software": "QSMPlanner", "world": "planning T1 RAS mm",
        "coordinate_systems": COORDINATE_SYSTEMS,
        "settings": settings.to_dict(),
        "mounting": settings.mounting, "margin_mm": settings.margin_mm, "electrode": settings.electrode,
        "landmarks_RAS_mm": lm, "landmarks_source": landmarks_source,
        "frame_system": None if frame_system is None else get_system(frame_system).name,
        "transforms": {"t1_from_gre": _matrix(t1_from_gre), "t1_from_ct": _matrix(t1_from_ct),
                       "xyz_from_t1": _matrix(xyz_from_t1)},
        "registration_qc": registration_qc or {},
        "frame_registration": None if frame is None else frame.to_dict(),
        "sides": {side: _with_predicted_tre(sp.plan, frame, xyz_from_t1) for side, sp in sides.items()},
        "messages": list(messages or []),
    }
    if lm and all(k in lm for k in ("AC", "PC", "MS")):
        doc["landmarks_ACPC_mm"] = {k: [float(x) for x in acpc_coordinates(v, lm["AC"], lm["PC"], lm["MS"])]
                                    for k, v in lm.items()}
    if xyz_from_t1 is not None and lm:
        doc["landmarks_frame_mm"] = {k: [float(x) for x in apply(xyz_from_t1, v)] for k, v in lm.items()}
    if timings is not None:
        doc["timings_s"] = dict(timings)
        doc["peak_memory_mb"] = peak_memory_mb()
    return doc


def _with_predicted_tre(side_plan: dict, frame, xyz_from_t1) -> dict:
    """The side plan with the frame registration's predicted TRE at its target (mm; the localizer's part
    of the error only, not the CT -> T1 registration's) in its frame settings."""
    if frame is None or xyz_from_t1 is None or not side_plan.get("frame"):
        return side_plan
    target_xyz = apply(xyz_from_t1, side_plan["target"]["RAS_mm"])
    settings = dict(side_plan["frame"], predicted_tre_mm=frame.predicted_tre_mm(target_xyz=target_xyz),
                    predicted_tre_note="frame registration's predicted target registration error at the "
                                       "target (localizer only; the CT -> T1 registration adds its own)")
    return dict(side_plan, frame=settings)


def write_plan_files(out_dir, doc: dict, *, qsm=None, t1_from_gre=None, labels=None, vessels=None,
                     sides: dict | None = None, picture_3d=None) -> dict:
    """plan.json, plan.csv and report.html into ``out_dir`` (each written atomically). The report's
    pictures need ``qsm`` (χ Volume on the GRE grid), ``labels`` (nuclei) and ``vessels`` on that grid,
    placed by ``t1_from_gre``, and the SidePlans ``sides``. Returns {file name: path}."""
    from ..report import plan_csv_text, write_report
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sides = sides or {}
    paths = {}
    write_report(out_dir / "report.html", doc, qsm=qsm, world_from_qsm=t1_from_gre, labels=labels,
                 world_from_labels=t1_from_gre, vessels=vessels, world_from_vessels=t1_from_gre,
                 searches={s: sp.search for s, sp in sides.items()},
                 chosen={s: sp.chosen for s, sp in sides.items()}, picture_3d=picture_3d)
    paths["report.html"] = out_dir / "report.html"
    write_text(out_dir / "plan.json", json.dumps(doc, indent=1, default=_jsonable))
    paths["plan.json"] = out_dir / "plan.json"
    write_text(out_dir / "plan.csv", plan_csv_text(doc))
    paths["plan.csv"] = out_dir / "plan.csv"
    return paths


def peak_memory_mb() -> float | None:
    """Peak resident memory of this process so far (MB, from getrusage; None where there is no getrusage)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
