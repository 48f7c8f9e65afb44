"""qsmplanner segment: STN/SN/RN and GPi/GPe on the QSM from the CIT168 prior refined by susceptibility;
the suggested target of --target-kind per side."""
from __future__ import annotations

import json

from ..planning.kinds import TARGET_KINDS


def register(sub):
    p = sub.add_parser(
        "segment", help="segment STN, SN, RN, GPi and GPe on the QSM (atlas prior + QSM refinement)",
        description="Segments STN_L/R, SN_L/R, RN_L/R, GPi_L/R and GPe_L/R on the QSM grid. The CIT168 atlas "
                    "prior comes through the T1 -> MNI normalisation (computed when --t1-to-mni is not given) "
                    "and --qsm-to-t1. The output segmentation is the QSM grid placed in T1 space (no "
                    "resampling): it overlays the T1 directly. Seeds and landmarks are T1 RAS points. The "
                    "printed JSON holds the suggested target of --target-kind on each side (T1 RAS and, with "
                    "--landmarks, AC-PC mm) with its cross-check.")
    p.add_argument("--qsm", required=True, help="QSM (χ in ppm), NIfTI/NRRD")
    p.add_argument("--t1", required=True, help="patient T1 (the world space)")
    p.add_argument("--qsm-to-t1", help="ITK transform (.h5/.tfm) from `qsmplanner register` "
                                       "(fixed T1, moving QSM/GRE); default: QSM already in T1 space")
    p.add_argument("--t1-to-mni", help="ITK transform from `qsmplanner normalize`; default: computed")
    p.add_argument("--seeds", help="Slicer markups (.mrk.json) with points labelled STN_L, STN_R, "
                                   "SN_L, SN_R, RN_L, RN_R, GPi_L, GPi_R, GPe_L and/or GPe_R inside the "
                                   "structures, and/or ROI boxes named so around them (T1 space)")
    p.add_argument("--landmarks", help="Slicer markups with AC, PC, MS (adds AC-PC coordinates)")
    p.add_argument("--target-kind", choices=TARGET_KINDS, default="stn",
                   help="target suggested on each side: stn (dorsolateral STN), gpi (posteroventral GPi, "
                        "with the classic indirect coordinates as a cross-check) or vim (indirect, from "
                        "AC-PC and the third ventricle measured on the T1; needs --landmarks); default stn")
    p.add_argument("--out", required=True, help="output Slicer segmentation (.seg.nrrd)")
    p.add_argument("--table", help="output statistics table (.csv)")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from ..errors import InputError
    from ..io.markups import read_points, read_seeds
    from ..io.volumes import read_volume
    from ..registration.transform_io import read_sitk_transform, read_transform
    from ..segmentation import seeds_to_qsm, segment_nuclei, write_seg_nrrd, write_stats_csv
    from ..segmentation.prior import atlas_prior
    from ..volume import Volume
    from .common import progress_bar

    if not str(args.out).endswith(".seg.nrrd"):
        raise InputError("--out must end with .seg.nrrd", args.out)
    if args.table and not str(args.table).lower().endswith(".csv"):
        raise InputError("--table must end with .csv", args.table)
    # read and check every input before the long computation
    qsm = read_volume(args.qsm, require_finite=False)
    qsm = qsm.with_data(np.nan_to_num(np.asarray(qsm.data, np.float32)))
    t1 = read_volume(args.t1)
    t1_from_qsm = read_transform(args.qsm_to_t1) if args.qsm_to_t1 else np.eye(4)
    t1_to_mni = read_sitk_transform(args.t1_to_mni) if args.t1_to_mni else None
    qsm_from_t1 = np.linalg.inv(t1_from_qsm)
    seeds = None
    if args.seeds:   # points, and boxes (ROIs) as 8 corners, in T1 space
        seeds = seeds_to_qsm(read_seeds(args.seeds), qsm_from_t1, args.seeds)
    landmarks = None
    if args.landmarks:
        landmarks = read_points(args.landmarks)
        missing = [k for k in ("AC", "PC", "MS") if k not in landmarks]
        if missing:
            raise InputError(f"landmarks missing {', '.join(missing)}", args.landmarks)
    if args.target_kind == "vim" and landmarks is None:
        raise InputError("--target-kind vim needs --landmarks (AC, PC, MS): the VIM is planned from AC-PC")

    progress = progress_bar("segment")
    if t1_to_mni is None:
        from ..registration import normalize_to_mni
        t1_to_mni = normalize_to_mni(t1, progress=progress.sub(0.0, 0.7)).transform
        progress = progress.sub(0.7, 1.0)
    prior = atlas_prior(qsm, t1_to_mni, t1_from_reference=t1_from_qsm)
    seg = segment_nuclei(qsm, prior, seeds=seeds, progress=progress)
    # place the QSM grid in T1 space (a change of geometry, not a resampling)
    placed = t1_from_qsm @ qsm.ras_from_ijk
    seg.labelmap = Volume(seg.labelmap.data, placed, seg.labelmap.name)
    seg.qsm = Volume(qsm.data, placed, qsm.name)
    seg.prior = Volume(seg.prior.data, placed, "prior")
    write_seg_nrrd(args.out, seg)
    rows = seg.stats(landmarks=landmarks)
    if args.table:
        write_stats_csv(args.table, rows)
    targets = suggested_targets(args.target_kind, seg, landmarks, t1)
    print(json.dumps({"segmentation": str(args.out), "table": args.table, "space": "T1 RAS",
                      "structures": rows, "target_kind": args.target_kind, "targets": targets,
                      "messages": seg.messages}, default=float))
    return 0


def suggested_targets(kind: str, seg, landmarks, t1) -> dict:
    """{side: TargetSuggestion.to_dict() | {"error": why}} for ``kind`` on a segmentation placed in T1
    space; the VIM's third ventricle is measured on ``t1``."""
    from ..errors import ProcessingError
    from ..planning import measure_third_ventricle, suggest_target_of_kind
    third_ventricle, out = None, {}
    if kind == "vim":
        try:
            third_ventricle = measure_third_ventricle(t1, landmarks)
        except ProcessingError as exc:
            out["third_ventricle_error"] = str(exc)
    for side in ("left", "right"):
        try:
            out[side] = suggest_target_of_kind(kind, side, seg, landmarks, third_ventricle=third_ventricle).to_dict()
        except ProcessingError as exc:
            out[side] = {"error": str(exc)}
    return out
