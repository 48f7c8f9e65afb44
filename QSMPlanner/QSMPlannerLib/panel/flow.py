"""The whole panel flow on the digital patient, as a user clicks it: GRE -> QSM -> registrations -> frame ->
nuclei -> risk map -> both sides planned -> coordinate table. Shared by the headless tests, the README
screenshots and the in-Slicer self test, so all three show the same computation.

World = the T1's RAS (mm). The GRE echoes, QSM and nuclei stay on the GRE grid under the observed
transform ``T1_from_GRE``; the CT is registered to the T1 after its frame registration and (``harden_ct``)
hardened, the frame pose following it.
"""
from __future__ import annotations

import time

from ..errors import ProcessingError
from ..scene import mrml
from ..scene.present import CT_NAME, T1_FROM_CT, T1_FROM_GRE, T1_NAME
from .logic import PlannerLogic


def run_whole_flow(logic: PlannerLogic | None = None, seed: int = 0, small: bool = True, atlas: str = "affine",
                   ct_registration: str = "register-or-known", harden_ct: bool = True, background: bool = False,
                   log=print) -> dict:
    """Run every stage through ``logic`` (a new scene if None) on ``phantom.make_patient(seed, small)``.

    ``atlas``: "affine" uses the digital patient's known MNI->T1 affine for the CIT168 prior (seconds);
    "normalize" runs the T1 -> MNI normalization, as a user's data would. ``ct_registration``:
    "register" (its failure raises), "known" (the patient's true T1_from_CT, as a transform file would
    give it), "register-or-known" (the known one, with a message, when the registration fails its checks).
    ``background``: run the long stages in worker processes, as the panel does.
    Returns {"logic", "patient", "nodes", "qsm", "gre_transform", "ct_transform", "frame", "segmentation",
    "plans" {side: nodes}, "profiles" {side: table}, "table", "timings_s"}."""
    logic = logic or PlannerLogic(mrml.new_scene())
    timings = {}
    out = {"logic": logic, "timings_s": timings}

    def run(task):
        return logic.run_in_process(task) if background else logic.run(task)

    def stage(name, fn):
        t0 = time.perf_counter()
        result = fn()
        timings[name] = round(time.perf_counter() - t0, 2)
        log(f"{name}: {timings[name]:.1f} s")
        return result

    nodes = stage("digital patient", lambda: run(logic.digital_patient_task(seed=seed, small=small)))
    patient = logic.patient
    mag, pha, t1, ct = nodes["gre_magnitude"][0], nodes["gre_phase"][0], nodes[T1_NAME], nodes.get(CT_NAME)
    out.update(patient=patient, nodes=nodes)

    qsm = stage("QSM", lambda: run(logic.qsm_task(mag, pha)))
    moved = [n for n in logic.gre_nodes_for(mag) if n is not mag] + [qsm]
    gre_t = stage("GRE -> T1", lambda: run(logic.registration_task(t1, mag, T1_FROM_GRE, moved)))
    out.update(qsm=qsm, gre_transform=gre_t)

    frame = ct_t = None
    if ct is not None:
        frame = stage("frame", lambda: run(logic.frame_task(ct)))

        def register_ct():
            known = patient.transforms["t1_from_ct"]
            if ct_registration == "known":
                return logic.set_transform(ct, known, T1_FROM_CT, harden=harden_ct)
            try:
                return run(logic.registration_task(t1, ct, T1_FROM_CT, harden=harden_ct))
            except ProcessingError as exc:
                if ct_registration != "register-or-known":
                    raise
                logic.messages.append(f"CT -> T1 registration failed ({exc}); the digital patient's known "
                                      f"T1_from_CT is used")
                log(logic.messages[-1])
                return logic.set_transform(ct, known, T1_FROM_CT, harden=harden_ct)
        ct_t = stage("CT -> T1", register_ct)
    out.update(frame=frame, ct_transform=ct_t)

    if atlas == "affine":
        logic.normalization_from_affine(patient.transforms["t1_from_mni"], t1)
    elif atlas != "normalize":
        raise ValueError(f"atlas must be 'affine' or 'normalize', not {atlas!r}")
    seg = stage("segmentation", lambda: run(logic.segmentation_task(qsm, t1)))
    out["segmentation"] = seg
    stage("risk map", lambda: run(logic.risk_task(qsm, seg, t1)))

    def plan_sides():
        plans, profiles = {}, {}
        for side in ("left", "right"):
            plans[side] = logic.plan_side(side, qsm, seg, t1, ct)
            profiles[side] = logic.distance_profile(side)[0]
        return plans, profiles
    out["plans"], out["profiles"] = stage("trajectories", plan_sides)
    out["table"] = stage("coordinates", lambda: logic.coordinates_table(ct, qsm))
    return out
