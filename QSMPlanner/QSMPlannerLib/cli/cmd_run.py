"""qsmplanner run: the whole planning flow on one patient (QSM -> nuclei -> safe trajectories -> frame)."""
from __future__ import annotations

import json
import time


def register(sub):
    from ..planning import ELECTRODES
    from ..stereotaxy import MOUNTINGS
    from ..workflow import PlanSettings
    defaults = PlanSettings()
    p = sub.add_parser(
        "run", help="plan both trajectories (STN, GPi or VIM) from multi-echo GRE + T1 (+ frame CT)",
        description="QSM reconstruction, GRE->T1 and CT->T1 registration, atlas normalisation, STN/SN/RN "
                    "segmentation, vein mask from QSM, safe-entry search (margin incl. lead and MER tracks), "
                    "electrode placement, frame registration. Writes plan.json, plan.csv, scene.mrb and a "
                    "self-contained report.html into --out. Coordinates: RAS mm of the T1, AC-PC and frame "
                    "coordinates (each named in the outputs).")
    from ..io import add_gre_arguments
    add_gre_arguments(p)
    p.add_argument("--t1", metavar="T1", help="planning T1 (NIfTI/NRRD/DICOM dir; default: the BIDS T1w)")
    p.add_argument("--ct", metavar="CT", help="stereotactic CT with the frame's localizer (default: the BIDS "
                   "_ct image if any; without a CT the plan has no frame coordinates)")
    p.add_argument("--landmarks", metavar="MRK.json", help="AC, PC, MS (mid-sagittal) points in T1 RAS "
                   "(Slicer markups); default: estimated from the atlas (flagged in the plan)")
    p.add_argument("--gre-to-t1", metavar="T.h5", help="known GRE -> T1 transform (ITK file from "
                   "'qsmplanner register --fixed T1 --moving GRE'); skips that registration")
    p.add_argument("--ct-to-t1", metavar="T.h5", help="known CT -> T1 transform (ITK file); skips that "
                   "registration")
    p.add_argument("--t1-to-mni", metavar="T.h5", help="known T1 -> MNI transform ('qsmplanner normalize'); "
                   "skips the normalization")
    p.add_argument("--frame", metavar="FRAME.json", help="known frame registration of the CT ('qsmplanner "
                   "frame'); skips the localizer registration")
    p.add_argument("--frame-system", choices=["leksell", "crw", "brw"], help="the frame on the CT (default: "
                   "recognised from its localizer)")
    p.add_argument("--mounting", default=defaults.mounting, choices=MOUNTINGS,
                   help=f"arc mounting for ring/arc angles (default {defaults.mounting})")
    p.add_argument("--electrode", default=defaults.electrode, choices=sorted(ELECTRODES),
                   help=f"lead model (default {defaults.electrode})")
    from ..planning import TARGET_KINDS
    p.add_argument("--target-kind", choices=TARGET_KINDS, default="stn",
                   help="target on both sides: stn (dorsolateral STN, from the QSM), gpi (posteroventral GPi, "
                        "from the QSM, classic AC-PC point as a cross-check), vim (indirect from AC-PC and the "
                        "third ventricle's wall) (default stn)")
    for side in ("left", "right"):
        p.add_argument(f"--target-kind-{side}", choices=TARGET_KINDS, help=f"target kind of the {side} side "
                       f"(default --target-kind)")
    p.add_argument("--margin", type=float, default=defaults.margin_mm, metavar="MM",
                   help=f"safety margin from vessels to the lead/MER surface (default {defaults.margin_mm:g} mm)")
    from .common import vec3
    for side in ("left", "right"):
        p.add_argument(f"--target-{side}", type=vec3, metavar="R,A,S",
                       help=f"{side} target in T1 RAS mm (overrides the suggestion)")
        p.add_argument(f"--entry-{side}", type=vec3, metavar="R,A,S",
                       help=f"{side} entry in T1 RAS mm (overrides the entry search; the path is scored)")
    p.add_argument("--no-scene", action="store_true", help="skip scene.mrb (and the 3-D rendering)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def inputs_from_args(args) -> dict:
    """Every input of ``plan_patient`` from the arguments (read and checked before any computation)."""
    from ..errors import InputError
    from ..io import gre_from_args, read_points, read_volume
    from ..io.bids import find_ct, find_t1
    from ..registration.transform_io import read_sitk_transform, read_transform
    from ..workflow.stages import check_landmarks
    gre = gre_from_args(args)
    t1_path = args.t1 or (find_t1(args.bids) if args.bids else None)
    if not t1_path:
        raise InputError("no planning T1: give --t1 (or a BIDS folder with *_T1w)")
    ct_path = args.ct or (find_ct(args.bids) if args.bids else None)
    out = {"gre": gre, "t1": read_volume(t1_path), "ct": read_volume(ct_path) if ct_path else None,
           "landmarks": check_landmarks(read_points(args.landmarks), args.landmarks) if args.landmarks else None,
           "t1_from_gre": read_transform(args.gre_to_t1) if args.gre_to_t1 else None,
           "t1_from_ct": read_transform(args.ct_to_t1) if args.ct_to_t1 else None,
           "t1_to_mni": read_sitk_transform(args.t1_to_mni) if args.t1_to_mni else None,
           "xyz_from_ct": None, "frame_system": None}
    if args.frame:
        if out["ct"] is None:
            raise InputError("--frame needs the CT it was registered on (--ct)", args.frame)
        from .cmd_plan import read_frame_json
        out["xyz_from_ct"], out["frame_system"] = read_frame_json(args.frame)
    if args.ct_to_t1 and out["ct"] is None:
        raise InputError("--ct-to-t1 needs the CT (--ct)", args.ct_to_t1)
    out["targets"] = {s: getattr(args, f"target_{s}") for s in ("left", "right")
                      if getattr(args, f"target_{s}") is not None} or None
    out["entries"] = {s: getattr(args, f"entry_{s}") for s in ("left", "right")
                      if getattr(args, f"entry_{s}") is not None} or None
    return out


def print_summary(result, paths, seconds):
    """One line per side (target in T1 RAS and frame coordinates, safety), the notes, then a JSON line."""
    from ..workflow.document import peak_memory_mb
    from ..report.tables import frame_of
    doc = result.document
    frame = frame_of(doc)
    for side, sp in doc["sides"].items():
        t = sp["target"]
        native = t.get(frame["point_key"])
        fr = sp.get("frame") or {}
        if isinstance(native, dict):
            where = ", ".join(f"{a} {native[a]:.1f}" for a in frame["axes"])
            where = f", {frame['name']} {where} mm (arc settings not provided: set them on the phantom base)"
        elif native:
            where = (f", Leksell XYZ {['%.1f' % v for v in native]}, ring {fr.get('ring_deg', 0):.1f} arc "
                     f"{fr.get('arc_deg', 0):.1f} ({fr.get('mounting')})")
        else:
            where = ""
        print(f"{side} {sp.get('target_kind', 'stn').upper()}: target T1 RAS {['%.1f' % v for v in t['RAS_mm']]}"
              + where
              + f"; {sp['safety']['label']}: vessel clearance {sp['safety']['vessel_clearance_mm']} mm, "
              + ("safe" if sp["safety"]["safe"] else "NOT SAFE"))
        if (sp.get("target_suggestion") or {}).get("statement"):
            print(f"  {sp['target_suggestion']['statement']}")
        print(f"  {sp['statement']}")
    for m in doc.get("messages", []):
        print(f"note: {m}")
    print(json.dumps({"out": {k: str(v) for k, v in paths.items()}, "total_s": round(seconds, 1),
                      "peak_memory_mb": peak_memory_mb()}))


def run(args) -> int:
    from ..workflow import PlanSettings, export_plan, plan_patient
    from .common import progress_bar
    kinds = {side: getattr(args, f"target_kind_{side}") or args.target_kind for side in ("left", "right")}
    settings = PlanSettings(mounting=args.mounting, electrode=args.electrode, margin_mm=args.margin,
                            frame_system=args.frame_system, target_kinds=kinds)
    inputs = inputs_from_args(args)
    t0 = time.perf_counter()
    result = plan_patient(settings=settings, progress=progress_bar("run"), **inputs)
    paths = export_plan(result, args.out, scene=not args.no_scene, progress=progress_bar("outputs"))
    print_summary(result, paths, time.perf_counter() - t0)
    return 0
