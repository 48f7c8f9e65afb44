"""qsmplanner frame: automatic Leksell G N-localizer registration of a stereotactic CT."""
from __future__ import annotations

import json

from .common import vec3


def register(sub):
    p = sub.add_parser(
        "frame", help="register the Leksell N-localizer in a stereotactic CT (image RAS -> Leksell XYZ)",
        description="Finds the Leksell G N-localizer rods (left, right, anterior plates) in a stereotactic "
                    "CT without clicks, fits the frame pose by least squares with outlier rejection and "
                    "writes FRAME.json: xyz_from_ras (4x4, CT RAS mm -> Leksell XYZ mm; +X patient's left, "
                    "+Y anterior, +Z inferior, centre 100/100/100), FRE overall and per plate, points used "
                    "and rejected, and a predicted TRE (at --target, and at the frame centre).")
    p.add_argument("--ct", required=True, help="stereotactic CT: DICOM directory or NIfTI/NRRD file (HU)")
    p.add_argument("--target", type=vec3, metavar="R,A,S",
                   help="target in CT RAS mm: report its Leksell XYZ and predicted TRE")
    p.add_argument("--out", required=True, metavar="FRAME.json", help="output JSON")
    p.add_argument("--threshold", type=float,
                   help="rod intensity threshold (default 400 HU for CT; automatic for other images)")
    p.add_argument("--polarity", choices=["bright", "dark"], default="bright",
                   help="fiducials brighter (CT, most MR boxes) or darker than their surroundings")
    p.add_argument("--clicks", metavar="RODS.mrk.json",
                   help="manual fallback: rod centroids clicked on a few slices (RAS), labelled "
                        "'<plate> <slice> <rod>' such as 'right 1 first', 'right 1 diagonal', 'right 1 second' "
                        "(plates right/left/anterior/posterior; 'first' is the posterior rod of a lateral "
                        "plate and the patient's-right rod of the anterior/posterior plate)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.atomic import write_text
    from ..io.volumes import read_volume
    from ..stereotaxy import register_frame
    from .common import progress_bar
    if args.clicks:
        from ..errors import InputError
        from ..io.markups import read_points
        from ..stereotaxy import clicks_from_points, register_frame_manual
        from pathlib import Path
        if not Path(args.ct).exists():
            raise InputError("file not found", args.ct)
        try:
            reg = register_frame_manual(clicks_from_points(read_points(args.clicks)))
        except InputError as exc:
            raise InputError(exc.problem, exc.path or args.clicks) from None
    else:
        ct = read_volume(args.ct)
        reg = register_frame(ct, progress=progress_bar("frame"), threshold=args.threshold,
                             polarity=args.polarity)
    doc = reg.to_dict(target_ras=args.target)
    doc["ct"] = str(args.ct)
    write_text(args.out, json.dumps(doc, indent=2) + "\n")
    per_plate = ", ".join(f"{k} {v:.2f}" for k, v in reg.fre_per_plate.items())
    line = (f"FRE {reg.fre_mm:.3f} mm ({per_plate}) over {reg.n_points} points, {reg.n_rejected} rejected; "
            f"predicted TRE at the frame centre {reg.predicted_tre_mm():.3f} mm")
    if args.target is not None:
        t = doc["target"]
        line += (f"; target RAS {args.target.round(2).tolist()} -> Leksell XYZ "
                 f"{[round(x, 2) for x in t['LeksellXYZ_mm']]} (predicted TRE {t['predicted_tre_mm']:.3f} mm)")
    print(line)
    box = reg.box_measured
    if "lateral_plate_separation" in box:
        print(f"box: lateral plates {box['lateral_plate_separation']:.2f} mm apart (nominal 190), rod spacing "
              + ", ".join(f"{k} {v['rod_spacing']:.2f}" for k, v in box.items()
                          if k != "nominal" and isinstance(v, dict)) + " mm (nominal 120)")
    for w in reg.warnings:
        print(f"warning: {w}")
    return 0
