"""``qsmplanner phantom OUT``: build the digital patient and write it as BIDS with its ground truth."""
from __future__ import annotations

import argparse
import time

from .common import progress_bar, vec3


def _positive(kind):
    def parse(text):
        v = kind(text)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return v
    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "phantom", help="build a digital DBS patient (BIDS GRE/T1/CT + ground truth)",
        description="Build a realistic digital patient from the MNI ICBM152 template and the CIT168 atlas "
                    "(random deformation and pose per seed; veins, skull, air; multi-echo GRE from the dipole "
                    "forward model; planning T1; stereotactic CT with the N-localizer, pins, posts, ring and head "
                    "holder of a Leksell G, CRW or BRW frame) and write it to OUT as BIDS (sub-phantom<seed>/anat) "
                    "with the ground truth under derivatives/truth/. Coordinates in the truth files are RAS mm, "
                    "and the frame's own coordinates (Leksell X, Y, Z or CRW/BRW LAT, AP, VERT) where named.")
    p.add_argument("out", metavar="OUT", help="output BIDS directory (created; replaced only if it is a "
                                               "previous QSMPlanner phantom)")
    p.add_argument("--seed", type=int, default=0, help="patient seed (deterministic; default 0)")
    p.add_argument("--small", action="store_true", help="half resolution: a few seconds (for tests)")
    p.add_argument("--tilt", type=float, default=0.0, metavar="DEG",
                   help="GRE slab tilt about the R axis in degrees (oblique acquisition; default 0)")
    p.add_argument("--slab", type=_positive(float), default=None, metavar="MM",
                   help="thin GRE slab of this thickness (8-128 mm) centred over the STNs (default: whole "
                        "brain, 128 mm)")
    p.add_argument("--voxel", type=vec3, default=None, metavar="x,y,z",
                   help="GRE voxel size in mm (default 1,1,1; field of view 256x256x128 mm)")
    p.add_argument("--field", type=float, choices=[3.0, 7.0], default=3.0, metavar="3|7",
                   help="B0 in tesla: 3 or 7 (default 3)")
    p.add_argument("--echoes", type=_positive(int), default=5, help="number of echoes (default 5)")
    p.add_argument("--snr", type=_positive(float), default=100.0, metavar="S",
                   help="first-echo SNR in the brain (default 100)")
    p.add_argument("--frame", choices=["leksell", "crw", "brw"], default="leksell",
                   help="stereotactic frame on the CT (default leksell: Leksell G)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..phantom import make_patient
    from ..phantom.writer import check_output_dir, write_patient_atomic
    voxel = (1.0, 1.0, 1.0) if args.voxel is None else tuple(float(v) for v in args.voxel)
    if min(voxel) <= 0:
        raise InputError(f"--voxel must be positive, got {voxel}")
    if args.slab is not None and not 8.0 <= args.slab <= 128.0:
        raise InputError(f"--slab must be 8-128 mm, got {args.slab:g}")
    check_output_dir(args.out)
    t0 = time.time()
    progress = progress_bar("phantom")
    patient = make_patient(seed=args.seed, small=args.small, tilt_deg=args.tilt, voxel_mm=voxel,
                           field_t=args.field, n_echoes=args.echoes, snr=args.snr, slab_mm=args.slab,
                           frame=args.frame, progress=progress.sub(0.0, 0.85))
    t1 = time.time()
    paths = write_patient_atomic(patient, args.out, progress=progress.sub(0.85, 1.0))
    progress.update(1.0, "done")
    print(f"digital patient seed {args.seed}: GRE {patient.gre.shape3} x {patient.gre.n_echoes} echoes, "
          f"T1 {patient.t1.shape3}, CT {patient.ct.shape3} with a {patient.ct.meta.get('localizer')} "
          f"-> {args.out} "
          f"(built in {t1 - t0:.1f} s, written in {time.time() - t1:.1f} s)")
    print(f"truth: {paths['truth_dir']}")
    return 0
