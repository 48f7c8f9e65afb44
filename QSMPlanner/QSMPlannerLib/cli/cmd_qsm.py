"""qsmplanner qsm: multi-echo GRE (or a field map) -> QSM (chi in ppm on the input grid)."""
from __future__ import annotations

import json

FIELD_OPTIONS = ("local_field", "total_field", "unwrapped_phase")


def register(sub):
    p = sub.add_parser(
        "qsm", help="QSM reconstruction from multi-echo GRE magnitude + phase, or from a field map",
        description="Consensus QSM pipeline: brain mask, MCPC-3D-S phase-offset removal, exact "
                    "quality-guided unwrapping, weighted echo fit, background field removal, dipole "
                    "inversion with B0 in the voxel frame; chi (ppm) referenced to the brain mean. "
                    "DICOM directories are converted with dcm2niix. A field map can replace the "
                    "echoes (--local-field, --total-field, --unwrapped-phase, each with --mask).")
    from ..io import add_gre_arguments
    add_gre_arguments(p)
    f = p.add_argument_group("field-map input (instead of --bids / --mag --phase; needs --mask)")
    f.add_argument("--local-field", metavar="F",
                   help="local (tissue) field, background already removed: ppm of B0, Hz, or radians "
                        "accrued at --te (say which with --field-units); only the dipole inversion runs")
    f.add_argument("--total-field", metavar="F",
                   help="total field, background NOT removed: ppm of B0, Hz, or radians at --te "
                        "(--field-units); a scanner B0 map in Hz is one (NIfTI, or its DICOM directory: "
                        "Hz from dcm2niix's sidecar); background removal (--bfr) then inversion")
    f.add_argument("--unwrapped-phase", metavar="F",
                   help="unwrapped phase in radians: 3-D (one echo) or 4-D (echoes last) with one --te "
                        "per echo (seconds); fitted to a total field, then as --total-field")
    f.add_argument("--field-units", choices=["ppm", "hz", "rad"],
                   help="units of --local-field / --total-field: ppm (of B0), hz, or rad (phase accrued "
                        "at --te). Default: 'Units' of the JSON sidecar beside the file, else the one unit "
                        "in which the values make a field of plausible size (refused when ambiguous). hz "
                        "and rad use --b0 (else the sidecar, else 3 T)")
    p.add_argument("--mask", help="brain mask on the input grid (default for GRE input: from the "
                                  "magnitude; required for field-map input)")
    p.add_argument("--bfr", choices=["vsharp", "pdf", "lbv", "resharp"], default="pdf",
                   help="background field removal (default pdf: projection onto dipole fields, refitted once after the first chi; vsharp erodes the mask edge)")
    p.add_argument("--inversion", choices=["tkd", "tv"], default="tv",
                   help="dipole inversion (default tv = TV-ADMM; tkd = fast preview)")
    p.add_argument("--keep-intermediates", metavar="DIR",
                   help="write mask, fields and fit residual there (NIfTI)")
    p.add_argument("--out", required=True, metavar="QSM.nii.gz", help="output chi map (ppm)")
    p.set_defaults(func=run)


def _field_result(args, given):
    from ..errors import InputError
    from ..io.fieldmap import read_field_input
    from ..io.volumes import read_volume
    from ..qsm import reconstruct_from_field
    from .common import progress_bar
    if len(given) > 1:
        raise InputError("give one of --local-field, --total-field, --unwrapped-phase")
    if getattr(args, "bids", None) or getattr(args, "mag", None) or getattr(args, "phase", None):
        raise InputError("a field-map input replaces --bids / --mag / --phase: give one or the other")
    kind = given[0].replace("_field", "")
    path = getattr(args, given[0])
    if kind == "unwrapped_phase" and args.field_units not in (None, "rad"):
        raise InputError(f"--unwrapped-phase is in radians, not {args.field_units}", path)
    if not args.mask:
        raise InputError(f"--{given[0].replace('_', '-')} needs --mask (there is no magnitude to compute a "
                         "brain mask from)", path)
    mask = read_volume(args.mask)
    fin = read_field_input(path, kind, mask, units=args.field_units, te=args.te, b0_tesla=args.b0)
    result = reconstruct_from_field(fin.field_ppm, mask, kind=fin.kind, b0_dir_ijk=args.b0_dir,
                                    bfr=args.bfr, inversion=args.inversion, progress=progress_bar("qsm"),
                                    keep_dir=args.keep_intermediates)
    result.messages[:0] = fin.notes
    method = args.inversion if fin.kind == "local" else f"{args.bfr}+{args.inversion}"
    return result, f"{given[0]}: {method}"


def run(args) -> int:
    from ..io.volumes import write_volume
    given = [k for k in FIELD_OPTIONS if getattr(args, k, None)]
    if given:
        result, method = _field_result(args, given)
    else:
        from ..io import gre_from_args
        from ..io.volumes import read_volume
        from ..qsm import reconstruct_qsm
        from .common import progress_bar
        if args.field_units:
            from ..errors import InputError
            raise InputError("--field-units goes with --local-field or --total-field")
        gre = gre_from_args(args)
        mask = read_volume(args.mask) if args.mask else None
        result = reconstruct_qsm(gre, mask=mask, bfr=args.bfr, inversion=args.inversion,
                                 progress=progress_bar("qsm"), keep_dir=args.keep_intermediates)
        method = f"{args.bfr}+{args.inversion}"
    write_volume(result.chi_ppm, args.out)
    for m in result.messages:
        print(f"note: {m}")
    print(json.dumps({"out": str(args.out), "method": method, "units": "ppm",
                      "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
                      "mask_voxels": int(result.mask.data.sum())}))
    return 0
