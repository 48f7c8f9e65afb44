"""``plan_patient``: the whole flow on one patient as explicit stage calls (QSM -> registrations -> atlas ->
nuclei -> risk -> frame -> both sides -> plan document), and ``export_plan``: every output file.
``qsmplanner run``/``demo`` call these; the Slicer panel calls the same stages one button at a time."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import as_progress
from ..volume import Volume
from . import stages
from .document import plan_document, write_plan_files
from .settings import PlanSettings

# share of the progress bar per stage
STAGE_SPANS = (("qsm", 0.0, 0.35), ("register", 0.35, 0.5), ("normalize", 0.5, 0.68), ("segment", 0.68, 0.75),
               ("risk", 0.75, 0.83), ("frame", 0.83, 0.88), ("plan", 0.88, 1.0))


@dataclass
class PatientPlan:
    """Everything a plan was made from and of (world = planning T1 RAS mm)."""
    settings: PlanSettings
    t1: Volume
    ct: Volume | None
    qsm: object                      # QSMResult (chi_ppm and mask on the GRE grid)
    t1_from_gre: np.ndarray
    t1_from_ct: np.ndarray | None
    xyz_from_t1: np.ndarray | None
    landmarks: dict
    landmarks_source: str
    segmentation: object             # NucleiSegmentation on the GRE grid
    vessels: Volume
    risk: object                     # RiskMap in the world
    frame: object | None             # FrameRegistration (None when the pose was given or failed)
    sides: dict                      # {side: SidePlan}
    document: dict
    normalization: object | None = None
    frame_system: str = "leksell"    # the frame the coordinates are in ("leksell", "crw", "brw")
    messages: list = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)


def plan_patient(gre, t1: Volume, ct: Volume | None = None, landmarks: dict | None = None,
                 settings: PlanSettings | None = None, progress=None, *, t1_from_gre=None, t1_from_ct=None,
                 t1_to_mni=None, prior_labels: Volume | None = None, xyz_from_ct=None, frame_system: str | None = None,
                 targets: dict | None = None, entries: dict | None = None, seeds: dict | None = None) -> PatientPlan:
    """Plan both sides for one patient.

    ``gre``: MultiEchoGRE; ``t1``: the planning T1 (the world); ``ct``: the frame CT (optional: without it
    there are no frame coordinates); ``landmarks``: {"AC","PC","MS"} T1 RAS mm (else estimated from the
    atlas and flagged). Known results skip their stage: ``t1_from_gre`` / ``t1_from_ct`` (RAS 4x4),
    ``t1_to_mni`` (AtlasNormalization or its SimpleITK transform), ``prior_labels`` (CIT168 labels on
    the GRE grid), ``xyz_from_ct`` (CT RAS -> the native coordinates of ``frame_system``, default that of
    ``settings``, else Leksell G). The surgeon's ``targets`` / ``entries``
    ({side: T1 RAS mm}) replace the suggestion / the searched entry; ``seeds`` {name: T1 RAS point or
    box} place nuclei (semi-automatic segmentation)."""
    settings = settings or PlanSettings()
    prog = as_progress(progress)
    sub = {name: prog.sub(a, b) for name, a, b in STAGE_SPANS}
    timings, messages = {}, []
    t_all = time.perf_counter()
    clock = [time.perf_counter()]

    def tick(name):
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 2)
        clock[0] = now

    if landmarks:
        landmarks = stages.check_landmarks(landmarks)
    qsm = stages.reconstruct_qsm(gre, settings, progress=sub["qsm"])
    messages += [f"QSM: {m}" for m in qsm.messages or []]
    tick("qsm")

    t1_brain = None
    reg_qc = {"gre_to_t1": {"given": True}}
    if t1_from_gre is None:
        from ..registration import t1_brain_mask
        t1_brain = t1_brain_mask(t1)
        reg = stages.register_gre_to_t1(t1, gre, qsm.mask, t1_brain, sub["register"].sub(0.0, 0.6), messages)
        t1_from_gre, reg_qc["gre_to_t1"] = reg.fixed_from_moving, reg.qc
    t1_from_gre = np.asarray(t1_from_gre, float)
    if ct is not None and t1_from_ct is None:
        reg_ct = stages.register_ct_to_t1(t1, ct, sub["register"].sub(0.6, 1.0), messages)
        t1_from_ct, reg_qc["ct_to_t1"] = reg_ct.fixed_from_moving, reg_ct.qc
    elif ct is not None:
        reg_qc["ct_to_t1"] = {"given": True}
    t1_from_ct = None if t1_from_ct is None else np.asarray(t1_from_ct, float)
    tick("registration")

    norm = t1_to_mni
    if norm is None and (prior_labels is None or not landmarks):
        norm = stages.normalize_t1(t1, t1_brain, progress=sub["normalize"])
    if prior_labels is not None:
        if not prior_labels.same_geometry(qsm.chi_ppm):
            raise InputError("the prior labels are not on the GRE grid", prior_labels.name or "prior")
        prior = Volume(np.asarray(prior_labels.data), qsm.chi_ppm.ras_from_ijk.copy(), "CIT168 prior (given)")
    else:
        prior = stages.atlas_prior(qsm.chi_ppm, norm, t1_from_gre)
    landmarks_source = "given"
    if not landmarks:
        if not hasattr(norm, "mni_to_t1"):
            raise InputError("without AC/PC/MS landmarks the T1 -> MNI normalization is needed to estimate them")
        landmarks = stages.estimated_landmarks(norm)
        landmarks_source = stages.LANDMARKS_ESTIMATED
        messages.append("AC/PC/MS " + landmarks_source)
    tick("normalization")

    qsm_seeds = None
    if seeds:
        from ..segmentation import seeds_to_qsm
        qsm_seeds = seeds_to_qsm(seeds, np.linalg.inv(t1_from_gre))
    seg = stages.segment(qsm.chi_ppm, prior, qsm_seeds, progress=sub["segment"])
    messages += [f"Segmentation: {m}" for m in seg.messages or []]
    tick("segmentation")

    risk, vessels = stages.risk_map(qsm.chi_ppm, qsm.mask, seg.labelmap, t1, t1_from_gre, gre, messages,
                                    sub["risk"])
    tick("risk_maps")

    frame = None
    xyz_from_t1 = None
    frame_system = frame_system or settings.frame_system or "leksell"
    if ct is not None and xyz_from_ct is not None:
        xyz_from_t1 = stages.xyz_from_t1(xyz_from_ct, t1_from_ct)
        messages.append(f"frame pose given ({frame_system}; not registered here)")
    elif ct is not None:
        try:
            frame = stages.register_frame(ct, settings.frame_system, progress=sub["frame"])
            xyz_from_t1 = stages.xyz_from_t1(frame.xyz_from_ras, t1_from_ct)
            frame_system = frame.system
        except ProcessingError as exc:
            messages.append(f"FRAME REGISTRATION FAILED: {exc} — no frame coordinates in this plan")
    tick("frame")

    ventricle = stages.third_ventricle(t1, landmarks, settings, messages)
    sides = stages.plan_sides(seg.labelmap, risk, t1_from_gre, landmarks, xyz_from_t1, settings, targets,
                              entries, frame_system, ventricle, progress=sub["plan"])
    tick("planning")
    timings["total"] = round(time.perf_counter() - t_all, 2)
    doc = plan_document(sides, settings, landmarks, landmarks_source, t1_from_gre, t1_from_ct, xyz_from_t1,
                        frame, reg_qc, messages, timings, frame_system if xyz_from_t1 is not None else None)
    return PatientPlan(settings, t1, ct, qsm, t1_from_gre, t1_from_ct, xyz_from_t1, landmarks, landmarks_source,
                       seg, vessels, risk, frame, sides, doc, norm, frame_system, messages, timings)


def export_plan(result: PatientPlan, out_dir, scene: bool = True, render_3d: bool = True, progress=None) -> dict:
    """Write every output of ``result`` into ``out_dir``: plan.json, plan.csv, report.html, the QSM, the vein
    mask, the nuclei (.seg.nrrd), the transforms (ITK .h5) and (``scene``) the Slicer scene scene.mrb.
    Returns {file name: path}. A file that cannot be written is noted in the plan's messages."""
    prog = as_progress(progress)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, notes = _write_data(out_dir, result)
    picture = None
    if scene:
        prog.update(0.3, "scene")
        try:
            from ..scene.present import plan_scene
            from ..scene.mrml import save_mrb
            mrml_scene = plan_scene(result)
            save_mrb(mrml_scene, out_dir / "scene.mrb")
            paths["scene.mrb"] = out_dir / "scene.mrb"
            if render_3d:
                picture = _render(mrml_scene, result, notes)
        except (ImportError, OSError, ProcessingError, InputError) as exc:
            notes.append(f"scene.mrb not written ({type(exc).__name__}: {exc})")
    prog.update(0.7, "report")
    result.document["messages"] = list(result.document.get("messages", [])) + notes
    paths.update(write_plan_files(out_dir, result.document, qsm=result.qsm.chi_ppm,
                                  t1_from_gre=result.t1_from_gre, labels=result.segmentation.labelmap,
                                  vessels=result.vessels, sides=result.sides, picture_3d=picture))
    for path in paths.values():  # temporary files are created 0600; outputs are for sharing
        try:
            path.chmod(0o644)
        except OSError:
            pass
    prog.update(1.0, "done")
    return paths


def _render(mrml_scene, result: PatientPlan, notes: list):
    try:
        from ..scene.render import render_3d
        focus = np.mean([sp.target_ras for sp in result.sides.values()], axis=0)
        return render_3d(mrml_scene, size=(720, 540), focus_ras=focus, distance_mm=260.0,
                         view_direction=(-0.5, 0.9, 0.6))
    except Exception as exc:  # noqa: BLE001 -- no OpenGL here: the report draws a sketch instead
        notes.append(f"3-D rendering unavailable ({type(exc).__name__}: {exc})")
        return None


def _write_data(out_dir: Path, result: PatientPlan):
    """qsm_chi_ppm.nii.gz, vessels.nii.gz, nuclei.seg.nrrd, T1_from_GRE.h5 (and T1_from_CT.h5)."""
    from ..io.volumes import write_volume
    from ..registration import write_transform
    from ..segmentation import write_seg_nrrd
    paths, notes = {}, []
    writers = [("qsm_chi_ppm.nii.gz", lambda p: write_volume(result.qsm.chi_ppm, p)),
               ("vessels.nii.gz", lambda p: write_volume(result.vessels, p)),
               ("nuclei.seg.nrrd", lambda p: write_seg_nrrd(p, result.segmentation)),
               ("T1_from_GRE.h5", lambda p: write_transform(p, result.t1_from_gre))]
    if result.t1_from_ct is not None:
        writers.append(("T1_from_CT.h5", lambda p: write_transform(p, result.t1_from_ct)))
    for name, write in writers:
        try:
            write(out_dir / name)
            paths[name] = out_dir / name
        except (OSError, InputError, ProcessingError, RuntimeError) as exc:
            notes.append(f"could not write {name}: {exc}")
    return paths, notes
