"""qsmplanner normalize: T1 -> MNI ICBM152 normalisation; optional CIT168 labels in T1 space."""
from __future__ import annotations

import json


def register(sub):
    p = sub.add_parser("normalize", help="normalise the T1 to MNI (atlas prior)",
                       description="Affine + nonlinear registration of the MNI ICBM152 template to the "
                                   "T1; writes the ITK composite transform (T1 -> MNI resampling).")
    p.add_argument("--t1", required=True, help="patient T1")
    p.add_argument("--out-transform", required=True, help="output ITK transform (.h5)")
    p.add_argument("--labels-out", help="CIT168 labels warped into the T1 grid (.nii.gz)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.volumes import read_volume, write_volume
    from ..registration import normalize_to_mni
    from .common import progress_bar
    t1 = read_volume(args.t1)
    norm = normalize_to_mni(t1, progress=progress_bar("normalize"))
    norm.write(args.out_transform)
    summary = {"transform": str(args.out_transform)}
    if args.labels_out:
        write_volume(norm.warp_labels(t1), args.labels_out)
        summary["labels"] = str(args.labels_out)
    summary["mni_origin_in_t1_ras"] = norm.mni_to_t1([0.0, 0.0, 0.0]).tolist()
    print(json.dumps(summary))
    return 0
