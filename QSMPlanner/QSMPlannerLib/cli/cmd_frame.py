"""qsmplanner frame: automatic N-localizer registration (Leksell G, CRW, BRW) of a stereotactic CT."""
from __future__ import annotations

import json

from .common import vec3

FRAMES = ("leksell", "crw", "brw")


def register(sub):
    p = sub.add_parser(
        "frame", help="register the N-localizer (Leksell G, CRW or BRW) in a stereotactic CT",
        description="Finds the N-localizer rods of a Leksell G, CRW or BRW frame in a stereotactic CT without "
                    "clicks (the frame is recognised from the localizer's geometry unless --frame names it), "
                    "fits each rod as a 3-D line, takes Brown's diagonal fiducials from the lines on every slice "
                    "and fits the frame pose by least squares with outlier rejection. Writes FRAME.json: the "
                    "frame system, xyz_from_ras (4x4, CT RAS mm -> the frame's coordinates: Leksell X, Y, Z or "
                    "CRW/BRW LAT, AP, VERT), frame_from_ras and image_from_frame, FRE overall, per plate and the "
                    "worst fiducial, points used and rejected, the fitted rods and fiducials, and a predicted "
                    "TRE (at --target and at the frame's centre, its coordinate origin). A CT without a recognisable localizer exits "
                    "with status 3 and one line saying what was found.")
    p.add_argument("--ct", required=True, help="stereotactic CT: DICOM directory or NIfTI/NRRD file (HU)")
    p.add_argument("--target", type=vec3, metavar="R,A,S",
                   help="target in CT RAS mm: report its frame coordinates and predicted TRE")
    p.add_argument("--frame", choices=FRAMES, default=None,
                   help="the frame system (default: recognised from the localizer)")
    p.add_argument("--out", required=True, metavar="FRAME.json", help="output JSON")
    p.add_argument("--fiducials", metavar="RODS.mrk.json",
                   help="also write the fitted rods' end points and diagonal fiducials as a Slicer point list (RAS)")
    p.add_argument("--threshold", type=float,
                   help="rod intensity threshold (default 400, 1000, 250, 150 HU for a CT, 250 first for pixels over 1.2 mm; automatic for other images)")
    p.add_argument("--polarity", choices=["bright", "dark"], default="bright",
                   help="fiducials brighter (CT, most MR boxes) or darker than their surroundings")
    p.add_argument("--clicks", metavar="RODS.mrk.json",
                   help="manual fallback: rod centroids clicked on a few slices (RAS), labelled "
                        "'<plate> <slice> <rod>' such as 'right 1 first', 'right 1 diagonal', 'right 1 second' "
                        "(Leksell G plates right/left/anterior/posterior, 'first' being the posterior rod of a "
                        "lateral plate and the patient's-right rod of the anterior/posterior plate; CRW "
                        "right/left/anterior; BRW posterior/right-anterior/left-anterior, see docs/frames.md)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.atomic import write_text
    from ..io.volumes import read_volume
    from ..stereotaxy import register_frame
    from .common import progress_bar
    if args.clicks:
        from pathlib import Path

        from ..errors import InputError
        from ..io.markups import read_points
        from ..stereotaxy import clicks_from_points, register_frame_manual
        if not Path(args.ct).exists():
            raise InputError("file not found", args.ct)
        try:
            reg = register_frame_manual(clicks_from_points(read_points(args.clicks)), system=args.frame or "leksell")
        except InputError as exc:
            raise InputError(exc.problem, exc.path or args.clicks) from None
    else:
        ct = read_volume(args.ct)
        reg = register_frame(ct, system=args.frame, progress=progress_bar("frame"), threshold=args.threshold,
                             polarity=args.polarity)
    doc = reg.to_dict(target_ras=args.target)
    doc["ct"] = str(args.ct)
    write_text(args.out, json.dumps(doc, indent=2) + "\n")
    if args.fiducials and reg.rods:
        from ..io.markups import write_points
        write_points(args.fiducials, reg.fiducial_markups(), name=f"{doc['system']} localizer")
    system = reg.frame_system
    per_plate = ", ".join(f"{k} {v:.2f}" for k, v in reg.fre_per_plate.items())
    worst = reg.worst_fiducial
    line = (f"{system.name} frame: FRE {reg.fre_mm:.3f} mm ({per_plate}) over {reg.n_points} points, "
            f"{reg.n_rejected} rejected"
            + (f", worst {worst['residual_mm']:.3f} mm ({worst['plate']})" if worst else "")
            + f"; predicted TRE at the frame centre {reg.predicted_tre_mm():.3f} mm")
    if args.target is not None:
        t = doc["target"]
        coords = ", ".join(f"{k} {v:.2f}" for k, v in t["frame"].items())
        line += (f"; target RAS {args.target.round(2).tolist()} -> {system.name} {coords} "
                 f"(predicted TRE {t['predicted_tre_mm']:.3f} mm)")
    print(line)
    box = reg.box_measured
    spacing = ", ".join(f"{k} {v['rod_spacing']:.2f}" for k, v in box.items()
                        if isinstance(v, dict) and "rod_spacing_nominal" in v)
    print(f"localizer: rod spacing {spacing} mm (nominal {system.rod_width_mm:g})"
          + (f", lateral plates {box['lateral_plate_separation']:.2f} mm apart (nominal 190)"
             if "lateral_plate_separation" in box else ""))
    for w in reg.warnings:
        print(f"warning: {w}")
    return 0
