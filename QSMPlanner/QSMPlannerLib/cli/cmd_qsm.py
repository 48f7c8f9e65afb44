"""qsmplanner qsm: multi-echo GRE -> QSM (chi in ppm on the GRE grid)."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser(
        "qsm", help="QSM reconstruction from multi-echo GRE magnitude + phase",
        description="Consensus QSM pipeline: brain mask, MCPC-3D-S phase-offset removal, exact "
                    "quality-guided unwrapping, weighted echo fit, background field removal, dipole "
                    "inversion with B0 in the voxel frame; chi (ppm) referenced to the brain mean.")
    try:
        from ..io import add_gre_arguments
    except ImportError:
        add_gre_arguments = _add_gre_arguments
    add_gre_arguments(p)
    p.add_argument("--mask", help="brain mask on the GRE grid (default: from the magnitude)")
    p.add_argument("--bfr", choices=["vsharp", "pdf", "lbv", "resharp"], default="vsharp",
                   help="background field removal (default vsharp)")
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
    try:
        from ..io import gre_from_args
    except ImportError:
        gre_from_args = _gre_from_args
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


# --- used only until io.add_gre_arguments / io.gre_from_args exist ------------------------------
def _add_gre_arguments(p):
    from .common import vec3
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bids", metavar="DIR", help="BIDS dataset or anat directory")
    src.add_argument("--mag", nargs="+", metavar="F", help="magnitude: one 4-D or several 3-D files")
    p.add_argument("--phase", nargs="+", metavar="F", help="phase: one 4-D or several 3-D files")
    p.add_argument("--te", nargs="+", type=float, metavar="S", help="echo times (s)")
    p.add_argument("--b0", type=float, metavar="T", help="field strength (T, default 3)")
    p.add_argument("--b0-dir", type=vec3, metavar="x,y,z",
                   help="B0 direction in RAS (default: scanner z = S axis)")


def _stack(paths):
    import numpy as np
    from ..errors import InputError
    from ..io.volumes import read_volume
    vols = [read_volume(f, allow_4d=True) for f in paths]
    ref = vols[0]
    for v, f in zip(vols[1:], paths[1:]):
        if not ref.same_geometry(v):
            raise InputError("echoes of different geometry", f)
    data = np.concatenate([v.data[..., None] if v.data.ndim == 3 else v.data for v in vols], axis=3)
    return data.astype(np.float32), ref.ras_from_ijk


def _gre_from_args(args):
    import numpy as np
    from ..errors import InputError
    from ..io.gre import MultiEchoGRE, b0_dir_from_geometry
    if args.bids:
        raise InputError("--bids needs the io loader (io.load_gre), not available in this build")
    if not args.phase or not args.te:
        raise InputError("--mag needs --phase and --te")
    mag, affine = _stack(args.mag)
    phase, paff = _stack(args.phase)
    if mag.shape != phase.shape or not np.allclose(affine, paff, atol=1e-3):
        raise InputError(f"magnitude {mag.shape} and phase {phase.shape} differ in geometry")
    te = np.asarray(args.te, float)
    if te.size != mag.shape[3]:
        raise InputError(f"{te.size} echo times for {mag.shape[3]} echoes")
    lo, hi = float(np.nanmin(phase)), float(np.nanmax(phase))
    if lo >= -np.pi - 1e-3 and hi <= np.pi + 1e-3 and hi - lo > 5:
        scaling = "radians"
    elif lo >= -4096.5 and hi <= 4095.5 and hi - lo > 4000:
        phase = phase * np.float32(np.pi / 4096) if lo < 0 else phase * np.float32(np.pi / 2048) - np.pi
        scaling = "Siemens integer"
    elif hi > lo:
        phase = (phase - lo) / (hi - lo) * np.float32(2 * np.pi) - np.float32(np.pi)
        scaling = f"[{lo:.4g}, {hi:.4g}] mapped to [-pi, pi)"
    else:
        raise InputError("the phase is constant: cannot interpret it", args.phase[0])
    phase = ((phase + np.pi) % (2 * np.pi) - np.pi).astype(np.float32)
    b0_dir = b0_dir_from_geometry(affine, args.b0_dir if args.b0_dir is not None else (0, 0, 1))
    return MultiEchoGRE(mag, phase, te, float(args.b0 or 3.0), affine, b0_dir, scaling,
                        str(args.mag[0]))
