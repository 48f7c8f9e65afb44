"""qsmplanner register: rigid multimodal registration of an image to a fixed (planning T1) image."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub):
    p = sub.add_parser("register", help="rigid registration (e.g. GRE/QSM or CT to the T1)",
                       description="Rigid Mattes-MI registration of --moving to --fixed; writes an ITK "
                                   "transform that Slicer loads (moving under the node = aligned).")
    p.add_argument("--fixed", required=True, help="fixed image (planning T1)")
    p.add_argument("--moving", required=True, help="moving image (GRE magnitude, CT, ...)")
    p.add_argument("--fixed-mask", help="optional fixed mask")
    p.add_argument("--moving-mask", help="optional moving mask")
    p.add_argument("--init", choices=["moments", "geometry"], default="moments")
    p.add_argument("--out-transform", required=True, help="output ITK transform (.h5/.tfm/.txt)")
    p.add_argument("--apply", help="volume to resample into the fixed space (e.g. QSM)")
    p.add_argument("--apply-out", help="output of --apply")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..io.volumes import read_volume, write_volume
    from ..registration import register_ct_to_t1, register_rigid, resample, write_transform
    from ..registration.to_t1 import looks_like_ct
    from ..registration.qc import qc_checkerboard
    from .common import progress_bar
    if bool(args.apply) != bool(args.apply_out):
        raise InputError("--apply and --apply-out go together")
    fixed = read_volume(args.fixed)
    moving = read_volume(args.moving)
    fmask = read_volume(args.fixed_mask) if args.fixed_mask else None
    mmask = read_volume(args.moving_mask) if args.moving_mask else None
    applied = read_volume(args.apply) if args.apply else None
    if fmask is None and mmask is None and args.init == "moments" and min(moving.shape3) > 1 \
            and looks_like_ct(moving):
        # a CT (HU) without masks: the workflow's CT path (head masks; one fallback, HU window clipped)
        messages = []
        result = register_ct_to_t1(fixed, moving, progress=progress_bar("register"), messages=messages)
        for line in messages:
            print(line, file=sys.stderr)
    else:
        result = register_rigid(fixed, moving, fmask, mmask, init=args.init, progress=progress_bar("register"))
    out = Path(args.out_transform)
    write_transform(out, result.fixed_from_moving)
    mov = moving if moving.data.ndim == 3 else moving.with_data(moving.data[..., 0])
    qc_png = out.with_name(out.name.split(".")[0] + "_qc.png")
    qc_checkerboard(fixed, resample(mov, fixed, result.fixed_from_moving), qc_png)
    if applied is not None:
        interp = "nearest" if applied.data.dtype.kind in "iu" else "linear"
        write_volume(resample(applied, fixed, result.fixed_from_moving, interpolation=interp),
                     args.apply_out)
    print(f"metric {result.metric_initial:.4f} -> {result.metric_final:.4f}, "
          f"shift {result.qc['shift_mm']:.2f} mm, angle {result.qc['angle_deg']:.2f} deg, "
          f"{result.iterations} iterations, {result.qc['seconds']:.1f} s")
    print(f"QC: {result.qc['summary']}")
    summary = result.to_dict()
    summary.update(transform=str(out), qc_png=str(qc_png))
    print(json.dumps(summary))
    return 0
