"""qsmplanner plan: one trajectory in RAS, the registered frame's coordinates (Leksell X, Y, Z with ring/arc,
or CRW/BRW LAT, AP, VERT), AC-PC; microelectrode tracks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..planning.kinds import TARGET_KINDS, indirect_check
from .common import vec3

MOUNTINGS = ("lateral-right", "lateral-left", "sagittal-anterior", "sagittal-posterior")


def register(sub):
    p = sub.add_parser(
        "plan", help="trajectory coordinates: RAS, frame (Leksell G, CRW, BRW), AC-PC, MER tracks",
        description="Writes PLAN.json with target and entry in RAS (and LPS), in the coordinates of the frame "
                    "registered by 'qsmplanner frame' (with --frame: Leksell X, Y, Z with ring/arc for the "
                    "mounting, or CRW/BRW LAT, AP, VERT with the phantom-base settings; the frame is always "
                    "named), in AC-PC coordinates (with --landmarks), the length, and the microelectrode "
                    "(Ben-gun) track end points; every value names its coordinate system. "
                    "Target and entry are RAS mm in the frame CT's space (or in the space of --transform's "
                    "fixed image). Write negative first values as --target=-12,3,-4.")
    p.add_argument("--target", type=vec3, required=True, metavar="R,A,S", help="target, RAS mm")
    p.add_argument("--entry", type=vec3, required=True, metavar="R,A,S", help="entry, RAS mm")
    p.add_argument("--frame", metavar="FRAME.json", help="frame registration from 'qsmplanner frame'")
    p.add_argument("--mounting", choices=MOUNTINGS, default="lateral-right",
                   help="Leksell G arc mounting for ring/arc (default lateral-right; other frames ignore it)")
    p.add_argument("--landmarks", metavar="ACPC.mrk.json",
                   help="Slicer markups with control points labelled AC, PC and MS (mid-sagittal), RAS")
    p.add_argument("--transform", metavar="PLAN_from_CT.h5",
                   help="optional ITK transform from the frame CT to the planning space (as written by "
                        "'qsmplanner register --fixed T1 --moving CT'), when target/entry are not in CT RAS")
    p.add_argument("--mer-spacing", type=float, default=2.0, help="MER track spacing, mm (default 2)")
    p.add_argument("--mer-pattern", choices=["cross", "grid"], default="cross",
                   help="cross: central/anterior/posterior/medial/lateral; grid: 3x3")
    p.add_argument("--target-kind", choices=TARGET_KINDS, default="stn",
                   help="what --target aims at (stn, gpi or vim; default stn); with --landmarks the plan also "
                        "reports that kind's indirect AC-PC target and its distance to --target")
    p.add_argument("--third-ventricle-width", type=float, metavar="MM",
                   help="third ventricle width (mm) for the VIM's indirect target (11 mm lateral to its wall); "
                        "without it the fixed 14 mm-from-midline variant is reported")
    p.add_argument("--out", required=True, metavar="PLAN.json", help="output JSON")
    p.set_defaults(func=run)


def read_frame_json(path):
    """(xyz_from_ras 4x4, frame system key) from a FRAME.json: image RAS mm -> the frame's native
    coordinates (a file without "system_key" is a Leksell G registration); InputError if bad."""
    from ..errors import InputError
    from ..stereotaxy import get_system
    path = Path(path)
    if not path.is_file():
        raise InputError("frame file not found", path)
    try:
        doc = json.loads(path.read_text())
        m = np.asarray(doc["xyz_from_ras"], float)
        system = get_system(doc.get("system_key", "leksell")).key
    except (ValueError, KeyError, TypeError, InputError) as exc:
        raise InputError(f"not a FRAME.json with 'xyz_from_ras' and a known frame system "
                         f"({exc.__class__.__name__}: {exc})", path) from exc
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise InputError("'xyz_from_ras' is not a finite 4x4 matrix", path)
    r = m[:3, :3]
    if not (np.allclose(r.T @ r, np.eye(3), atol=1e-4) and np.linalg.det(r) > 0
            and np.allclose(m[3], [0, 0, 0, 1])):
        raise InputError("'xyz_from_ras' is not a rigid transform", path)
    return m, system


def read_acpc_landmarks(path) -> dict:
    """{"AC", "PC", "MS"} RAS mm from a Slicer markups file; InputError when one is missing."""
    from ..errors import InputError
    from ..io.markups import read_points
    points = read_points(path)
    found = {k.upper(): v for k, v in points.items()}
    missing = [k for k in ("AC", "PC", "MS") if k not in found]
    if missing:
        raise InputError(f"landmarks {', '.join(missing)} missing (control point labels must be AC, PC, MS; "
                         f"found {', '.join(points) or 'none'})", path)
    return {k: found[k] for k in ("AC", "PC", "MS")}


def run(args) -> int:
    from ..errors import InputError
    from ..io.atomic import write_text
    from ..stereotaxy import plan_to_dict
    if np.linalg.norm(args.entry - args.target) < 1e-3:
        raise InputError("--target and --entry coincide")
    if not args.mer_spacing > 0:
        raise InputError("--mer-spacing must be positive")
    xyz_from_ras, system = read_frame_json(args.frame) if args.frame else (None, "leksell")
    source = str(args.frame) if args.frame else None
    if args.transform:
        if xyz_from_ras is None:
            raise InputError("--transform needs --frame")
        from ..registration.transform_io import read_transform
        plan_from_ct = read_transform(args.transform)
        xyz_from_ras = xyz_from_ras @ np.linalg.inv(plan_from_ct)
        source += f" composed with the inverse of {args.transform}"
    landmarks = read_acpc_landmarks(args.landmarks) if args.landmarks else None
    doc = plan_to_dict(args.target, args.entry, xyz_from_ras, args.mounting, landmarks,
                       spacing_mm=args.mer_spacing, pattern=args.mer_pattern, frame_source=source, system=system)
    if args.landmarks:
        doc["landmarks_file"] = str(args.landmarks)
    doc["target_kind"] = args.target_kind
    doc["indirect_check"] = indirect_check(args.target_kind, args.target, landmarks, args.third_ventricle_width)
    write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(readout_line(doc, landmarks is not None))
    return 0


def readout_line(doc: dict, with_acpc: bool) -> str:
    """One line for the terminal: length, the frame's name and settings, AC-PC readout."""
    line = f"length {doc['length_mm']:.1f} mm"
    f = doc["frame"]
    if f:
        coords = f["target"] if isinstance(f["target"], dict) else dict(zip("XYZ", f["target"]))
        line += f"; {f['system']} target " + ", ".join(f"{k} {v:.2f}" for k, v in coords.items())
        if "ring_deg" in f:
            line += f"; {f['mounting']}: ring {f['ring_deg']:.2f} deg, arc {f['arc_deg']:.2f} deg"
        else:
            line += "; arc settings not provided (set them on the phantom base)"
    else:
        line += "; no frame registered (RAS only)"
    if with_acpc:
        r = doc["target"]["ACPC_readout"]
        line += (f"; AC-PC: {r['lateral_mm']:.1f} mm lateral ({r['side']}), AP {r['ap_mm']:+.1f} mm, "
                 f"vertical {r['vertical_mm']:+.1f} mm")
    if doc.get("indirect_check"):
        line += f"; {doc['indirect_check']['statement']}"
    return line
