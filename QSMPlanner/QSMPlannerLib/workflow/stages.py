"""The stages of a plan, one function each, as the command line and the Slicer panel call them.

World = the planning T1's RAS (mm). The GRE/QSM and the CT keep their own grids, placed in the world by
``t1_from_gre`` / ``t1_from_ct`` (RAS 4x4, ``a_from_b`` maps points of b into a). Leksell XYZ comes from
the CT's frame registration: ``xyz_from_t1 = xyz_from_ct @ inv(t1_from_ct)``.

Every function takes plain data (``Volume``, ``MultiEchoGRE``, matrices, ``PlanSettings``) and returns the
stage's result; none reads or writes files or touches MRML, so both faces get the same numbers.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..volume import Volume
from .settings import SIDES, PlanSettings

# Approximate MNI152 positions (RAS mm) of AC, PC and a mid-sagittal point, used only when no landmarks
# are given (the plan says so).
MNI_LANDMARKS = {"AC": (0.0, 2.0, -4.0), "PC": (0.0, -24.0, -2.0), "MS": (0.0, -10.0, 40.0)}
LANDMARKS_ESTIMATED = "estimated from the MNI atlas (approximate: place AC/PC/MS to confirm)"


def read_gre(progress=None, **where):
    """The multi-echo GRE from files (``io.load_gre``'s keywords: bids, mag, phase, te, b0, b0_dir)."""
    from ..io import load_gre
    if progress is not None:
        progress.update(0.0, "reading the GRE")
    return load_gre(**where)


def reconstruct_qsm(gre, settings: PlanSettings, mask: Volume | None = None, progress=None):
    """χ (ppm) on the GRE grid from the multi-echo GRE (``qsm.reconstruct_qsm``; ``gre``: a MultiEchoGRE or
    its ``EchoVolumes``): ``QSMResult``."""
    from ..io.gre import as_multi_echo
    from ..qsm import reconstruct_qsm as qsm
    return qsm(as_multi_echo(gre), mask=mask, bfr=settings.bfr, inversion=settings.inversion, progress=progress)


def register_gre_to_t1(t1: Volume, gre, qsm_mask: Volume | None = None, t1_brain: Volume | None = None,
                       progress=None, messages: list | None = None):
    """GRE (first-echo magnitude, with the QSM's brain mask) -> planning T1: ``RigidResult``."""
    from ..registration import register_gre_to_t1 as register
    return register(t1, gre.echo_volume(0), qsm_mask, t1_brain, progress, messages)


def register_ct_to_t1(t1: Volume, ct: Volume, progress=None, messages: list | None = None):
    """Frame CT -> planning T1: ``RigidResult``."""
    from ..registration import register_ct_to_t1 as register
    return register(t1, ct, progress, messages)


def normalize_t1(t1: Volume, t1_brain: Volume | None = None, progress=None):
    """Planning T1 -> MNI (the atlas prior's registration): ``AtlasNormalization``."""
    from ..registration import normalize_to_mni, t1_brain_mask
    if t1_brain is None:
        t1_brain = t1_brain_mask(t1)
    return normalize_to_mni(t1, t1_mask=t1_brain, progress=progress)


def atlas_prior(chi: Volume, t1_to_mni, t1_from_gre):
    """The CIT168 prior for the QSM grid: the atlas, kept with its registration (``AtlasPrior``).
    ``t1_to_mni``: an ``AtlasNormalization`` or its SimpleITK transform (T1 LPS -> MNI LPS)."""
    from ..segmentation.prior import atlas_prior as prior
    transform = getattr(t1_to_mni, "transform", t1_to_mni)
    return prior(chi, transform, t1_from_reference=np.asarray(t1_from_gre, float))


def prior_and_segment(chi: Volume, t1: Volume | None, t1_from_gre, t1_to_mni=None, prior_labels: Volume | None = None,
                      seeds: dict | None = None, progress=None):
    """The atlas prior (normalizing ``t1`` unless ``t1_to_mni`` or ``prior_labels``, CIT168 labels on the
    QSM grid, is given) and the segmentation on it: ``(AtlasNormalization or the given t1_to_mni, NucleiSegmentation)``."""
    from ..progress import as_progress
    prog = seg_progress = as_progress(progress)
    norm = t1_to_mni
    if prior_labels is not None:
        if not prior_labels.same_geometry(chi):
            raise InputError("the prior label map is not on the QSM grid", prior_labels.name or "prior")
        prior = Volume(np.asarray(prior_labels.data), chi.ras_from_ijk.copy(), "CIT168 prior (given)")
    else:
        if norm is None:
            if t1 is None:
                raise InputError("the atlas prior needs the planning T1 (or a prior label map)")
            norm = normalize_t1(t1, progress=prog.sub(0.0, 0.7))
            seg_progress = prog.sub(0.7, 1.0)
        prior = atlas_prior(chi, norm, t1_from_gre)
    return norm, segment(chi, prior, seeds, progress=seg_progress)


def estimated_landmarks(t1_to_mni) -> dict:
    """AC, PC and MS (T1 RAS mm) carried from their approximate MNI positions."""
    norm = t1_to_mni
    pts = norm.mni_to_t1(np.array([MNI_LANDMARKS[k] for k in ("AC", "PC", "MS")]))
    return {k: np.asarray(p, float) for k, p in zip(("AC", "PC", "MS"), np.atleast_2d(pts))}


def check_landmarks(landmarks: dict, source="landmarks") -> dict:
    """{"AC", "PC", "MS"} as float arrays (T1 RAS mm); InputError naming what is missing or degenerate."""
    found = {str(k).upper(): np.asarray(v, float) for k, v in (landmarks or {}).items()}
    missing = [k for k in ("AC", "PC", "MS") if k not in found]
    if missing:
        raise InputError(f"landmarks lack {', '.join(missing)} (control points labelled AC, PC, MS)", source)
    ac, pc, ms = found["AC"], found["PC"], found["MS"]
    if np.linalg.norm(ac - pc) < 5.0:
        raise InputError(f"AC and PC are {np.linalg.norm(ac - pc):.1f} mm apart (expected ~25 mm)", source)
    u = (ac - pc) / np.linalg.norm(ac - pc)
    if np.linalg.norm(np.cross(u, ms - pc)) < 5.0:
        raise InputError("MS lies on the AC-PC line: it must be a mid-sagittal point above it", source)
    return {k: found[k] for k in ("AC", "PC", "MS")}


def segment(chi: Volume, prior, seeds: dict | None = None, progress=None):
    """STN, SN, RN on the QSM grid from the prior refined by susceptibility: ``NucleiSegmentation``.
    ``seeds``: {name: point or box} in the QSM's RAS (``segmentation.seeds_to_qsm``)."""
    from ..segmentation import segment_nuclei
    return segment_nuclei(chi, prior, seeds=seeds, progress=progress)


def r2star(gre, mask: Volume | None, messages: list | None = None):
    """R2* (1/s) from the echo magnitudes (a vein cue beside χ), or None with a note when the echoes
    cannot give it."""
    from ..io.gre import as_multi_echo
    from ..planning import r2star_map
    try:
        return r2star_map(as_multi_echo(gre), mask)
    except InputError as exc:
        if messages is not None:
            messages.append(f"veins from QSM only ({exc})")
        return None


def risk_map(chi: Volume, brain: Volume | None, nuclei: Volume | None, t1: Volume | None, t1_from_gre,
             gre=None, messages: list | None = None, progress=None):
    """Everything the entry search keeps away from, in the world (T1 RAS): veins from χ (and the R2* of
    ``gre``'s echoes) on the QSM grid, the segmented ``nuclei`` left out (paramagnetic but not vessels);
    ventricles and sulci from the T1 inside the QSM's ``brain`` mask; the brain mask itself (entries at the
    brain surface). Returns ``(RiskMap, vessels Volume)``; what cannot be mapped is noted in ``messages``."""
    from ..planning import RiskMap, csf_structures, vessel_mask
    from ..registration import resample
    if progress is not None:
        progress.update(0.0, "veins")
    t1_from_gre = np.asarray(t1_from_gre, float)
    inside = None if brain is None else brain.with_data(np.asarray(brain.data) > 0)
    r2 = None if gre is None else r2star(gre, inside, messages)
    exclude = None if nuclei is None else np.asarray(nuclei.data) > 0
    vessels = vessel_mask(chi, inside, exclude=exclude, r2star=r2)
    ventricles = sulci = None
    if progress is not None:
        progress.update(0.5, "ventricles and sulci")
    if t1 is not None and inside is not None:
        try:
            on_t1 = resample(inside.with_data(np.asarray(inside.data, np.float32)), t1, t1_from_gre,
                             interpolation="linear")
            ventricles, sulci = csf_structures(t1, on_t1.with_data((np.asarray(on_t1.data) > 0.5).astype(np.uint8)))
        except (InputError, ValueError) as exc:  # CSF is an aid; the plan stands without it, and says so
            if messages is not None:
                messages.append(f"ventricles/sulci not mapped ({exc})")
    risk = RiskMap.from_masks(vessels=vessels, ventricles=ventricles, sulci=sulci,
                              brain=None if inside is None else inside.with_data(np.asarray(inside.data, np.uint8)),
                              world_from_volume={"vessels": t1_from_gre, "brain": t1_from_gre})
    return risk, vessels


def register_frame(ct: Volume, system: str | None = None, progress=None):
    """The localizer on the CT: ``FrameRegistration`` (CT RAS -> the frame's coordinates; ``system``:
    "leksell", "crw", "brw", or None to recognise it)."""
    from ..stereotaxy import register_frame as register
    return register(ct, system=system, progress=progress)


def xyz_from_t1(xyz_from_ct, t1_from_ct) -> np.ndarray:
    """Planning T1 RAS -> the frame's native coordinates (Leksell XYZ, CRW/BRW LAT, AP, VERT), through the CT."""
    return np.asarray(xyz_from_ct, float) @ np.linalg.inv(np.asarray(t1_from_ct, float))


def third_ventricle(t1: Volume, landmarks: dict | None, settings: PlanSettings, messages: list | None = None):
    """The third ventricle's walls measured on the T1 (``planning.measure_third_ventricle``) when a side is
    planned at the VIM; None otherwise, or when they cannot be measured (the VIM then uses the fixed
    distance from the midline, and ``messages`` says so)."""
    from ..errors import ProcessingError
    from ..planning import measure_third_ventricle
    if "vim" not in settings.target_kinds.values() or t1 is None or not landmarks:
        return None
    try:
        return measure_third_ventricle(t1, landmarks)
    except ProcessingError as exc:
        if messages is not None:
            messages.append(f"third ventricle not measured on the T1 ({exc}): the VIM uses the fixed distance "
                            f"from the midline")
        return None


def _plan_options(settings: PlanSettings, frame_system: str | None) -> dict:
    return {"mounting": settings.mounting, "margin_mm": settings.margin_mm, "electrode": settings.electrode,
            "adjust_target_mm": settings.adjust_target_mm, "mer_spacing_mm": settings.mer_spacing_mm,
            "mer_pattern": settings.mer_pattern, "frame_system": frame_system or "leksell"}


def plan_side(side: str, nuclei: Volume, risk, t1_from_gre, landmarks: dict | None, xyz_from_world,
              settings: PlanSettings, target_ras=None, entry_ras=None, frame_system: str | None = None,
              third_ventricle=None, progress=None):
    """One side's plan (``planning.plan.SidePlan``): target (suggested from ``nuclei``, the label map on
    the QSM grid, unless ``target_ras``), entry (the safest of the search unless ``entry_ras``), electrode,
    and every coordinate (RAS, AC-PC, the frame's with its settings) in ``.plan``. The target's kind is
    ``settings.target_kinds[side]`` (the VIM uses ``third_ventricle``). ``xyz_from_world``: world RAS -> the
    native coordinates of ``frame_system`` (the registered frame; None: Leksell G)."""
    from ..planning.plan import plan_side as plan
    if side not in SIDES:
        raise InputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    return plan(side, nuclei, risk, t1_from_gre, landmarks, xyz_from_world, target_ras=target_ras,
                entry_ras=entry_ras, target_kind=settings.target_kinds[side], third_ventricle=third_ventricle,
                progress=progress, **_plan_options(settings, frame_system))


def update_coordinates(side_plan, landmarks: dict | None, xyz_from_world, settings: PlanSettings,
                       frame_system: str | None = None):
    """A side plan's coordinates for the current frame pose, landmarks and mounting (``planning.plan``)."""
    from ..planning.plan import update_coordinates as update
    return update(side_plan, xyz_from_world, landmarks, settings.mounting, settings.mer_spacing_mm,
                  settings.mer_pattern, frame_system or "leksell")


def plan_sides(nuclei: Volume, risk, t1_from_gre, landmarks, xyz_from_world, settings: PlanSettings,
               targets: dict | None = None, entries: dict | None = None, frame_system: str | None = None,
               third_ventricle=None, progress=None) -> dict:
    """{side: SidePlan} for both sides (``plan_side``), with the surgeon's ``targets`` / ``entries``
    ({side: T1 RAS mm}) where given."""
    out = {}
    for k, side in enumerate(SIDES):
        sub = progress.sub(k / 2, (k + 1) / 2) if progress is not None else None
        out[side] = plan_side(side, nuclei, risk, t1_from_gre, landmarks, xyz_from_world, settings,
                              (targets or {}).get(side), (entries or {}).get(side), frame_system, third_ventricle,
                              sub)
    return out
