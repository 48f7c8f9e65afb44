"""qsmplanner run: the whole planning flow on one patient (QSM -> nuclei -> safe trajectories -> frame)."""
from __future__ import annotations

import json
import time


def register(sub):
    p = sub.add_parser(
        "run", help="plan both STN trajectories from multi-echo GRE + T1 (+ frame CT)",
        description="QSM reconstruction, GRE->T1 and CT->T1 registration, atlas normalisation, STN/SN/RN "
                    "segmentation, vein mask from QSM, safe-entry search (margin incl. lead and MER tracks), "
                    "electrode placement, Leksell frame registration. Writes plan.json, plan.csv, scene.mrb "
                    "and a self-contained report.html into --out. Coordinates: RAS mm of the T1, AC-PC and "
                    "Leksell X/Y/Z (each named in the outputs).")
    from ..io import add_gre_arguments
    add_gre_arguments(p)
    p.add_argument("--t1", metavar="T1", help="planning T1 (NIfTI/NRRD/DICOM dir; default: the BIDS T1w)")
    p.add_argument("--ct", metavar="CT", help="stereotactic CT with the Leksell localizer (default: the BIDS "
                   "_ct image if any; without a CT the plan has no frame coordinates)")
    p.add_argument("--landmarks", metavar="MRK.json", help="AC, PC, MS (mid-sagittal) points in T1 RAS "
                   "(Slicer markups); default: estimated from the atlas (flagged in the plan)")
    p.add_argument("--mounting", default="lateral-right",
                   choices=["lateral-right", "lateral-left", "sagittal-anterior", "sagittal-posterior"],
                   help="arc mounting for ring/arc angles (default lateral-right)")
    p.add_argument("--electrode", default="medtronic_3389",
                   choices=["medtronic_3389", "medtronic_3387", "bsci_vercise_directional"],
                   help="lead model (default medtronic_3389)")
    p.add_argument("--margin", type=float, default=3.0, metavar="MM",
                   help="safety margin from vessels to the lead/MER surface (default 3 mm)")
    from .common import vec3
    for side in ("left", "right"):
        p.add_argument(f"--target-{side}", type=vec3, metavar="R,A,S",
                       help=f"{side} target in T1 RAS mm (overrides the suggestion)")
        p.add_argument(f"--entry-{side}", type=vec3, metavar="R,A,S",
                       help=f"{side} entry in T1 RAS mm (overrides the entry search; the path is scored)")
    p.add_argument("--no-scene", action="store_true", help="skip scene.mrb (and the 3-D rendering)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def inputs_from_args(args):
    """(gre, t1, ct, landmarks) from the arguments; BIDS supplies T1/CT when not given."""
    from ..errors import InputError
    from ..io import gre_from_args, read_points, read_volume
    from ..io.bids import find_ct, find_t1
    gre = gre_from_args(args)
    t1_path = args.t1 or (find_t1(args.bids) if args.bids else None)
    if not t1_path:
        raise InputError("no planning T1: give --t1 (or a BIDS folder with *_T1w)")
    ct_path = args.ct or (find_ct(args.bids) if args.bids else None)
    t1 = read_volume(t1_path)
    ct = read_volume(ct_path) if ct_path else None
    landmarks = None
    if args.landmarks:
        landmarks = read_points(args.landmarks)
        missing = [k for k in ("AC", "PC", "MS") if k not in landmarks]
        if missing:
            raise InputError(f"landmarks lack {', '.join(missing)}", args.landmarks)
    return gre, t1, ct, landmarks


def print_summary(result, seconds):
    plan = result["plan"]
    for side, sp in plan["sides"].items():
        t = sp["target"]
        xyz = t.get("LeksellXYZ_mm")
        fr = sp.get("frame") or {}
        print(f"{side}: target RAS {['%.1f' % v for v in t['RAS_mm']]}"
              + (f", Leksell XYZ {['%.1f' % v for v in xyz]}, ring {fr.get('ring_deg', 0):.1f} arc "
                 f"{fr.get('arc_deg', 0):.1f} ({fr.get('mounting')})" if xyz else "")
              + f"; {sp['safety']['label']}: vessel clearance {sp['safety']['vessel_clearance_mm']} mm, "
              + ("safe" if sp["safety"]["safe"] else "NOT SAFE"))
        print(f"  {sp['statement']}")
    for m in plan.get("messages", []):
        print(f"note: {m}")
    print(json.dumps({"out": {k: str(v) for k, v in result["paths"].items()},
                      "total_s": round(seconds, 1), "peak_memory_mb": result["peak_memory_mb"]}))


def run(args) -> int:
    from ..pipeline import run_patient
    from .common import progress_bar
    gre, t1, ct, landmarks = inputs_from_args(args)
    t0 = time.perf_counter()
    targets = {s: getattr(args, f"target_{s}") for s in ("left", "right") if getattr(args, f"target_{s}") is not None}
    entries = {s: getattr(args, f"entry_{s}") for s in ("left", "right") if getattr(args, f"entry_{s}") is not None}
    result = run_patient(gre, t1, ct, landmarks, args.out, progress=progress_bar("run"), mounting=args.mounting,
                         electrode=args.electrode, margin_mm=args.margin, write_scene=not args.no_scene,
                         targets=targets or None, entries=entries or None)
    print_summary(result, time.perf_counter() - t0)
    return 0
