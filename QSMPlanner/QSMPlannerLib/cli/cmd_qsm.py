"""qsmplanner qsm: multi-echo GRE -> QSM (chi in ppm on the GRE grid)."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser(
        "qsm", help="QSM reconstruction from multi-echo GRE magnitude + phase",
        description="Consensus QSM pipeline: brain mask, MCPC-3D-S phase-offset removal, exact "
                    "quality-guided unwrapping, weighted echo fit, background field removal, dipole "
                    "inversion with B0 in the voxel frame; chi (ppm) referenced to the brain mean.")
    from ..io import add_gre_arguments
    add_gre_arguments(p)
    p.add_argument("--mask", help="brain mask on the GRE grid (default: from the magnitude)")
    p.add_argument("--bfr", choices=["vsharp", "pdf", "lbv", "resharp"], default="pdf",
                   help="background field removal (default pdf: projection onto dipole fields, refitted once after the first chi; vsharp erodes the mask edge)")
    p.add_argument("--inversion", choices=["tkd", "tv"], default="tv",
                   help="dipole inversion (default tv = TV-ADMM; tkd = fast preview)")
    p.add_argument("--keep-intermediates", metavar="DIR",
                   help="write mask, fields and fit residual there (NIfTI)")
    p.add_argument("--out", required=True, metavar="QSM.nii.gz", help="output chi map (ppm)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.volumes import read_volume, write_volume
    from ..qsm import reconstruct_qsm
    from .common import progress_bar
    from ..io import gre_from_args
    gre = gre_from_args(args)
    mask = read_volume(args.mask) if args.mask else None
    result = reconstruct_qsm(gre, mask=mask, bfr=args.bfr, inversion=args.inversion,
                             progress=progress_bar("qsm"), keep_dir=args.keep_intermediates)
    write_volume(result.chi_ppm, args.out)
    for m in result.messages:
        print(f"note: {m}")
    print(json.dumps({"out": str(args.out), "method": f"{args.bfr}+{args.inversion}",
                      "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
                      "mask_voxels": int(result.mask.data.sum())}))
    return 0
