"""The whole flow on one patient: QSM -> registrations -> atlas -> nuclei -> planning -> frame -> outputs.

World = the planning T1's RAS (mm). The QSM/GRE and the CT keep their own grids, placed in the world by
``t1_from_gre`` / ``t1_from_ct`` (RAS->RAS 4x4). Leksell XYZ comes from the CT's frame registration:
``xyz_from_t1 = xyz_from_ct @ inv(t1_from_ct)``.

Outputs in ``out_dir``: plan.json (both sides), plan.csv, scene.mrb, report.html, qsm_chi_ppm.nii.gz,
vessels.nii.gz, nuclei.seg.nrrd (when the writers are available), transforms (ITK .h5).
"""
from __future__ import annotations

import csv
import io
import json
import time
import resource
from pathlib import Path

import numpy as np

from .errors import InputError, ProcessingError
from .io.atomic import atomic_path, write_text
from .progress import as_progress
from .volume import Volume

# Approximate MNI152 positions (RAS mm) of AC, PC and a mid-sagittal point, used only when no landmarks
# are given (the plan says so).
MNI_LANDMARKS = {"AC": (0.0, 2.0, -4.0), "PC": (0.0, -24.0, -2.0), "MS": (0.0, -10.0, 40.0)}

STAGES = (("qsm", 0.0, 0.35), ("register", 0.35, 0.5), ("normalize", 0.5, 0.68), ("segment", 0.68, 0.75),
          ("risk", 0.75, 0.83), ("frame", 0.83, 0.88), ("plan", 0.88, 0.92), ("outputs", 0.92, 1.0))


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def _apply(m, p):
    m = np.asarray(m, float)
    return m[:3, :3] @ np.asarray(p, float) + m[:3, 3]


def plan_csv_text(plan: dict) -> str:
    """plan.csv: one row per side and point; every column names its coordinate system."""
    cols = ["side", "point", "R_RAS_mm", "A_RAS_mm", "S_RAS_mm", "x_ACPC_mm", "y_ACPC_mm", "z_ACPC_mm",
            "X_Leksell_mm", "Y_Leksell_mm", "Z_Leksell_mm", "ring_deg", "arc_deg", "mounting",
            "vessel_clearance_mm", "safe"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for side, sp in (plan.get("sides") or {}).items():
        frame = sp.get("frame") or {}
        for point in ("target", "entry"):
            p = sp.get(point) or {}
            ras = p.get("RAS_mm") or [""] * 3
            acpc = p.get("ACPC_mm") or [""] * 3
            xyz = p.get("LeksellXYZ_mm") or [""] * 3
            row = [side, point] + [f"{v:.3f}" if v != "" else "" for v in list(ras) + list(acpc) + list(xyz)]
            if point == "target" and frame:
                row += [f"{frame.get('ring_deg', float('nan')):.3f}", f"{frame.get('arc_deg', float('nan')):.3f}",
                        frame.get("mounting", "")]
            else:
                row += ["", "", ""]
            safety = sp.get("safety") or {}
            row += [safety.get("vessel_clearance_mm", ""), safety.get("safe", "")]
            w.writerow(row)
    return buf.getvalue()


def run_patient(gre, t1: Volume, ct: Volume | None = None, landmarks: dict | None = None, out_dir=None,
                progress=None, *, mounting: str = "lateral-right", electrode: str = "medtronic_3389",
                margin_mm: float = 3.0, qsm_options: dict | None = None, write_scene: bool = True,
                render_3d: bool = True, t1_from_gre=None, t1_from_ct=None, prior_labels: Volume | None = None,
                xyz_from_ct=None, targets: dict | None = None, entries: dict | None = None) -> dict:
    """Run the whole flow and write the outputs into ``out_dir``. Returns a dict with the plan, the paths
    written and the intermediate results (``qsm``, ``t1_from_gre``, ``t1_from_ct``, ``segmentation``,
    ``vessels``, ``risk``, ``sides``, ``frame``, ``timings_s``, ``peak_memory_mb``).

    ``gre``: MultiEchoGRE; ``t1``: planning T1 Volume (the world); ``ct``: frame CT (optional; without it
    no Leksell coordinates); ``landmarks``: {"AC","PC","MS"} in T1 RAS mm (optional; else estimated from
    the atlas and flagged). Known results may be passed to skip a stage: ``t1_from_gre``/``t1_from_ct``
    (RAS 4x4), ``prior_labels`` (CIT168 labels on the GRE grid), ``xyz_from_ct`` (CT RAS -> Leksell XYZ).
    The surgeon's overrides: ``targets`` / ``entries`` {"left"|"right": T1 RAS mm} replace the suggested
    target / the searched entry (that trajectory is then scored and reported)."""
    if out_dir is None:
        raise InputError("run_patient needs an output folder (out_dir)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prog = as_progress(progress)
    sub = {name: prog.sub(a, b) for name, a, b in STAGES}
    timings, messages, paths = {}, [], {}
    t_all = time.perf_counter()

    def tick(name, t0):
        timings[name] = round(time.perf_counter() - t0, 2)

    from .qsm import reconstruct_qsm
    from .registration import normalize_to_mni, register_ct_to_t1, register_gre_to_t1, t1_brain_mask
    from .segmentation import segment_nuclei
    from .segmentation.prior import atlas_prior
    from .planning import RiskMap, csf_structures, vessel_mask
    from .planning.plan import COORDINATE_SYSTEMS, plan_both_sides

    # 1. QSM
    t0 = time.perf_counter()
    qsm_res = reconstruct_qsm(gre, progress=sub["qsm"], **(qsm_options or {}))
    chi = qsm_res.chi_ppm
    messages += [f"QSM: {m}" for m in (getattr(qsm_res, "messages", []) or [])]
    tick("qsm", t0)

    # 2. rigid registrations into the T1
    t0 = time.perf_counter()
    mag = gre.echo_volume(0)
    t1_brain = None  # the T1 brain mask, computed once (GRE->T1 registration, atlas normalization)
    reg_qc = {"given": True}
    if t1_from_gre is None:
        t1_brain = t1_brain_mask(t1)
        reg = register_gre_to_t1(t1, mag, qsm_res.mask, t1_brain, sub["register"].sub(0, 0.6), messages)
        t1_from_gre, reg_qc = reg.fixed_from_moving, reg.qc
    t1_from_gre = np.asarray(t1_from_gre, float)
    t1_from_ct = None if t1_from_ct is None else np.asarray(t1_from_ct, float)
    if ct is not None and t1_from_ct is None:
        reg_ct = register_ct_to_t1(t1, ct, sub["register"].sub(0.6, 1.0), messages)
        t1_from_ct = np.asarray(reg_ct.fixed_from_moving, float)
    tick("registration", t0)

    # 3. atlas
    t0 = time.perf_counter()
    norm = None
    if prior_labels is None or not landmarks:
        if t1_brain is None:
            t1_brain = t1_brain_mask(t1)
        norm = normalize_to_mni(t1, t1_mask=t1_brain, progress=sub["normalize"])
    # the atlas itself and its registration (read once by the segmentation), or the given labels
    prior = atlas_prior(chi, norm.transform, t1_from_reference=t1_from_gre) if prior_labels is None else \
        Volume(np.asarray(prior_labels.data), chi.ras_from_ijk.copy(), "CIT168 prior (given)")
    lm_source = "given"
    if not landmarks:
        pts = norm.mni_to_t1(np.array([MNI_LANDMARKS[k] for k in ("AC", "PC", "MS")]))
        landmarks = {k: np.asarray(p, float) for k, p in zip(("AC", "PC", "MS"), np.atleast_2d(pts))}
        lm_source = "estimated from the MNI atlas (approximate: place AC/PC/MS to confirm)"
        messages.append("AC/PC/MS " + lm_source)
    landmarks = {k: np.asarray(v, float) for k, v in landmarks.items()}
    tick("normalization", t0)

    # 4. nuclei
    t0 = time.perf_counter()
    seg = segment_nuclei(chi, prior, progress=sub["segment"])
    messages += [f"Segmentation: {m}" for m in (getattr(seg, "messages", []) or [])]
    tick("segmentation", t0)

    # 5. risk structures
    t0 = time.perf_counter()
    sub["risk"].update(0.0, "veins from QSM")
    r2 = None
    try:
        from .planning import r2star_map
        r2 = r2star_map(gre, qsm_res.mask)
    except InputError as exc:
        messages.append(f"veins from QSM only ({exc})")
    vessels = vessel_mask(chi, qsm_res.mask, exclude=np.asarray(seg.labelmap.data) > 0, r2star=r2)
    ventricles = sulci = None
    try:
        from .registration import resample
        brain_t1 = resample(qsm_res.mask.with_data(np.asarray(qsm_res.mask.data, np.float32)), t1,
                            t1_from_gre, interpolation="linear")
        brain_t1 = brain_t1.with_data((np.asarray(brain_t1.data) > 0.5).astype(np.uint8))
        ventricles, sulci = csf_structures(t1, brain_t1)
    except Exception as exc:  # CSF from the T1 is an aid; the plan stands without it, and says so
        messages.append(f"ventricles/sulci not mapped ({type(exc).__name__}: {exc})")
    sub["risk"].update(0.5, "distance maps")
    risk = RiskMap.from_masks(vessels=vessels, ventricles=ventricles, sulci=sulci, brain=qsm_res.mask,
                              world_from_volume={"vessels": t1_from_gre, "brain": t1_from_gre})
    tick("risk_maps", t0)

    # 6. frame
    t0 = time.perf_counter()
    frame = None
    xyz_from_t1 = None
    if ct is not None and xyz_from_ct is not None:
        xyz_from_t1 = np.asarray(xyz_from_ct, float) @ np.linalg.inv(t1_from_ct)
        messages.append("frame pose given (not registered here)")
    elif ct is not None:
        from .stereotaxy import register_frame
        try:
            frame = register_frame(ct, progress=sub["frame"])
            xyz_from_t1 = np.asarray(frame.xyz_from_ras, float) @ np.linalg.inv(t1_from_ct)
        except ProcessingError as exc:
            messages.append(f"FRAME REGISTRATION FAILED: {exc} — no Leksell coordinates in this plan")
    tick("frame", t0)

    # 7. plan both sides
    t0 = time.perf_counter()
    sides = plan_both_sides(seg, risk, world_from_segmentation=t1_from_gre, landmarks=landmarks,
                            xyz_from_world=xyz_from_t1, mounting=mounting, margin_mm=margin_mm,
                            electrode=electrode, targets=targets, entries=entries, progress=sub["plan"])
    tick("planning", t0)

    # 8. outputs
    t0 = time.perf_counter()
    out_prog = sub["outputs"]
    plan = {
        "software": "QSMPlanner", "world": "planning T1 RAS mm", "coordinate_systems": COORDINATE_SYSTEMS,
        "mounting": mounting, "margin_mm": margin_mm, "electrode": electrode,
        "landmarks_RAS_mm": {k: [float(x) for x in v] for k, v in landmarks.items()},
        "landmarks_source": lm_source,
        "transforms": {"t1_from_gre": t1_from_gre.tolist(),
                       "t1_from_ct": None if t1_from_ct is None else t1_from_ct.tolist(),
                       "xyz_from_t1": None if xyz_from_t1 is None else xyz_from_t1.tolist()},
        "registration_qc": {"gre_to_t1": reg_qc},
        "frame_registration": None,
        "sides": {s: sp.plan for s, sp in sides.items()},
        "messages": messages,
    }
    if frame is not None:
        try:
            plan["frame_registration"] = frame.to_dict()
        except Exception:
            plan["frame_registration"] = {"fre_mm": float(frame.fre_mm), "n_points": int(frame.n_points)}
    # volumes, segmentation and transforms are written by a background thread (compression releases the
    # GIL) while the scene, the 3-D view and the report are made
    from concurrent.futures import ThreadPoolExecutor
    writer = ThreadPoolExecutor(max_workers=1)
    written = writer.submit(_write_volumes, out_dir, chi, vessels, seg, t1_from_gre, t1_from_ct)
    out_prog.update(0.2, "scene")
    picture = None
    if write_scene:
        try:
            scene = _build_scene(out_dir / "scene.mrb", t1, chi, ct, seg, vessels, landmarks, sides,
                                 t1_from_gre, t1_from_ct, xyz_from_t1, plan)
            paths["scene.mrb"] = out_dir / "scene.mrb"
            if render_3d:
                try:
                    from .scene.render import render_3d as _render
                    focus = np.mean([sp.target_ras for sp in sides.values()], axis=0)
                    picture = _render(scene, size=(720, 540), focus_ras=focus, distance_mm=260.0,
                                      view_direction=(-0.5, 0.9, 0.6))
                except Exception as exc:
                    messages.append(f"3-D rendering unavailable ({type(exc).__name__}: {exc})")
        except Exception as exc:
            messages.append(f"scene.mrb not written ({type(exc).__name__}: {exc})")
    out_prog.update(0.6, "report")
    timings["outputs_before_report"] = round(time.perf_counter() - t0, 2)
    timings["total"] = round(time.perf_counter() - t_all, 2)
    plan["timings_s"] = dict(timings)
    plan["peak_memory_mb"] = peak_memory_mb()
    from .report import write_report
    write_report(out_dir / "report.html", plan, qsm=chi, world_from_qsm=t1_from_gre, labels=seg.labelmap,
                 world_from_labels=t1_from_gre, vessels=vessels, world_from_vessels=t1_from_gre,
                 searches={s: sp.search for s, sp in sides.items()},
                 chosen={s: sp.chosen for s, sp in sides.items()}, picture_3d=picture)
    paths["report.html"] = out_dir / "report.html"
    more_paths, more_messages = written.result()
    writer.shutdown()
    paths.update(more_paths)
    messages += more_messages
    write_text(out_dir / "plan.json", json.dumps(plan, indent=1, default=_jsonable))
    paths["plan.json"] = out_dir / "plan.json"
    write_text(out_dir / "plan.csv", plan_csv_text(plan))
    paths["plan.csv"] = out_dir / "plan.csv"
    for path in paths.values():  # temp files are created 0600; outputs are for sharing
        try:
            path.chmod(0o644)
        except OSError:
            pass
    out_prog.update(1.0, "done")
    return {"plan": plan, "paths": paths, "qsm": qsm_res, "t1_from_gre": t1_from_gre, "t1_from_ct": t1_from_ct,
            "xyz_from_t1": xyz_from_t1, "segmentation": seg, "vessels": vessels, "risk": risk, "sides": sides,
            "frame": frame, "landmarks": landmarks, "timings_s": timings,
            "peak_memory_mb": plan["peak_memory_mb"]}


def _write_volumes(out_dir, chi, vessels, seg, t1_from_gre, t1_from_ct):
    """qsm_chi_ppm.nii.gz, vessels.nii.gz, nuclei.seg.nrrd, T1_from_GRE.h5 (and T1_from_CT.h5) into
    ``out_dir``; returns ({name: path}, [messages about what could not be written])."""
    paths, messages = {}, []
    from .io.volumes import write_volume
    for name, vol in (("qsm_chi_ppm.nii.gz", chi), ("vessels.nii.gz", vessels)):
        try:
            write_volume(vol, out_dir / name)
            paths[name] = out_dir / name
        except Exception as exc:
            messages.append(f"could not write {name}: {exc}")
    try:
        from .segmentation import write_seg_nrrd
        write_seg_nrrd(out_dir / "nuclei.seg.nrrd", seg)
        paths["nuclei.seg.nrrd"] = out_dir / "nuclei.seg.nrrd"
    except Exception as exc:
        messages.append(f"could not write nuclei.seg.nrrd: {exc}")
    try:
        from .registration import write_transform
        write_transform(out_dir / "T1_from_GRE.h5", t1_from_gre)
        paths["T1_from_GRE.h5"] = out_dir / "T1_from_GRE.h5"
        if t1_from_ct is not None:
            write_transform(out_dir / "T1_from_CT.h5", t1_from_ct)
            paths["T1_from_CT.h5"] = out_dir / "T1_from_CT.h5"
    except Exception as exc:
        messages.append(f"could not write transforms: {exc}")
    return paths, messages


def _build_scene(path, t1, chi, ct, seg, vessels, landmarks, sides, t1_from_gre, t1_from_ct, xyz_from_t1, plan):
    from .planning.electrodes import electrode_polydata
    from .scene import build_scene
    from .report.html import coordinate_rows
    models, lines, parents = {}, {}, {"QSM": "T1_from_GRE", "Nuclei": "T1_from_GRE", "Vessels": "T1_from_GRE"}
    points = {"Targets": {}, "Entries": {}}
    for side, sp in sides.items():
        s = "L" if side == "left" else "R"
        lines[f"Trajectory_{s}"] = (sp.chosen.entry_ras, sp.target_ras)
        body, contacts = electrode_polydata(sp.placement)
        models[f"Electrode_{s}"] = body
        models[f"Electrode_{s}_contacts"] = contacts
        points["Targets"][f"target_{s}"] = sp.target_ras
        points["Entries"][f"entry_{s}"] = sp.chosen.entry_ras
    transforms = {"T1_from_GRE": t1_from_gre}
    results = {"t1": t1, "volumes": {"QSM": chi}, "labelmaps": {"Vessels": vessels}, "segmentation": seg,
               "landmarks": landmarks, "points": points, "lines": lines, "models": models,
               "transforms": transforms, "parents": parents}
    if ct is not None:
        results["ct"] = ct
        transforms["T1_from_CT"] = t1_from_ct
        parents["CT"] = "T1_from_CT"
    h, rows = coordinate_rows(plan)
    tables = {"Coordinates": [dict(zip(h, [str(c) for c in r])) for r in rows]}
    if xyz_from_t1 is not None:
        tables["LeksellXYZ_from_T1"] = [{"row": i, "c0": v[0], "c1": v[1], "c2": v[2], "c3": v[3]}
                                        for i, v in enumerate(np.asarray(xyz_from_t1).tolist())]
    results["tables"] = tables
    return build_scene(results, path)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (MB, from getrusage)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
