"""``PlannerLogic``: the Slicer panel's face on the workflow. It turns MRML nodes into the workflow's data,
runs the workflow's stages (long ones in a worker process, ``workflow.jobs``), and shows the results with
``scene.present``. It holds no planning logic of its own: the plan it saves is the one ``qsmplanner run``
writes for the same inputs.

The nodes are the source of truth: the segmentation node (Segment Editor edits included) gives the
nuclei, the point lists give landmarks, targets and entries, transform nodes the registrations. Runs
headless on the slicer-core wheel (tests) and inside 3D Slicer.
"""
from __future__ import annotations

import inspect
import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import Cancelled, Progress, run_to_end
from ..scene import mrml
from ..scene import present as P
from ..volume import Volume
from ..workflow import PlanSettings, SIDES, plan_document, stages, write_plan_files
from ..workflow.jobs import Job, run_stage

SIDES_LETTERS = P.SIDE_LETTERS


def _qc_key(transform_name: str) -> str:
    """The plan document's name of a registration (as the command line writes it) from its transform node's."""
    return {P.T1_FROM_GRE: "gre_to_t1", P.T1_FROM_CT: "ct_to_t1"}.get(transform_name, transform_name)


class StageTask:
    """One stage of the panel: ``stage`` (a ``workflow.jobs`` stage name) run with ``kwargs``, then
    ``apply(result)`` on the caller's thread turns the result into nodes.

    ``start(background=True)`` runs it in a worker process: call ``step()`` from a timer until it returns
    True, then ``finish()`` for the nodes. An ``apply`` written as a generator adds its nodes a few per
    ``step`` (it yields between them), so no single step holds the event loop for long.
    ``start(background=False)`` runs it here and now (scripts, tests)."""

    def __init__(self, name: str, stage: str, kwargs: dict, apply: Callable[[Any], Any], python=None,
                 log: list | None = None):
        self.name, self.stage, self.kwargs, self.apply = name, stage, kwargs, apply
        self._log = log
        self._python = python
        self.job: Job | None = None
        self.result, self.error, self.trace, self.messages = None, None, "", []
        self.fraction, self.message = 0.0, ""
        self.computed = False            # the stage has run (result or error)
        self.done = False                # ... and its nodes are made (or it failed)
        self.elapsed_s = 0.0
        self._cancel = Progress()
        self._applying = None            # the running ``apply`` generator
        self._nodes = None

    def start(self, background: bool = True) -> "StageTask":
        if background:
            self.job = Job(self.stage, self.kwargs, python=self._python)
            self.kwargs = None
            return self
        t0 = time.monotonic()

        def report(fraction, message):
            self.fraction = fraction
            if message:
                self.message = message
        try:
            self.result, self.messages = run_stage(self.stage, self.kwargs, Progress(report, self._cancel.cancel_event))
        except BaseException as exc:  # noqa: BLE001 -- handed to finish(), as from a worker
            self.error, self.trace = exc, traceback.format_exc()
        self.computed = self.done = True
        self.elapsed_s = time.monotonic() - t0
        return self

    def step(self) -> bool:
        """Advance by one bounded piece of work (the worker's inputs, its progress, its outputs, then the
        nodes); True once finished."""
        if self.done:
            return True
        if not self.computed:
            if self.job is None:
                return False
            self.computed = self.job.step()
            self.fraction, self.message = self.job.fraction, self.job.message
            if not self.computed:
                return False
            self.error, self.trace, self.elapsed_s = self.job.error, self.job.trace, self.job.elapsed_s
            if self.error is None:
                self.result, self.messages = self.job.result
            if self.error is not None or not inspect.isgeneratorfunction(self.apply):
                self.done = True
                return True
            self._applying = self.apply(self.result)
            self.message = "adding the results to the scene"
            return False
        try:
            next(self._applying)
        except StopIteration as stop:
            self._nodes, self._applying, self.done = stop.value, None, True
        except Exception as exc:  # noqa: BLE001 -- raised by finish()
            self.error, self.trace, self._applying, self.done = exc, traceback.format_exc(), None, True
        return self.done

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def cancel(self):
        if self.job is not None:
            self.job.cancel()
        else:
            self._cancel.cancel()

    def wait(self, on_poll: Callable[[], Any] | None = None) -> "StageTask":
        """Step until finished, calling ``on_poll`` between steps (e.g. to process GUI events)."""
        while not self.step():
            if on_poll is not None:
                on_poll()
            if not self.computed:
                time.sleep(0.02)
        return self

    def apply_result(self, result):
        """The nodes ``apply`` makes of ``result`` (all at once, also for a generator ``apply``)."""
        out = self.apply(result)
        return run_to_end(out) if inspect.isgenerator(out) else out

    def finish(self):
        """The stage's nodes (``apply`` of its result); raises its error."""
        if not self.computed:
            raise ProcessingError(f"{self.name} is still running")
        if self.error is not None:
            raise self.error
        if self._log is not None:
            self._log.extend(f"{self.name}: {m}" for m in self.messages)
            self._log = None
        if self.done and self._nodes is not None:
            return self._nodes
        if self._applying is None:
            out = self.apply(self.result)
            if not inspect.isgenerator(out):
                return out
            self._applying = out
        self._nodes, self._applying, self.done = run_to_end(self._applying), None, True
        return self._nodes


class PlannerLogic:
    """MRML nodes <-> workflow calls, on ``scene``. ``python``: the interpreter command for worker
    processes (inside Slicer: PythonSlicer; default: this interpreter). ``dicom_files``: node -> the DICOM
    files behind a volume loaded by Slicer's DICOM module (inside Slicer: from its DICOM database), for
    echo times, magnitude/phase and phase scaling from the headers."""

    def __init__(self, scene=None, python=None, dicom_files=None):
        if scene is None:
            import slicer
            scene = getattr(slicer, "mrmlScene", None) or mrml.new_scene()
        self.scene = scene
        self.python = python
        self.dicom_files = dicom_files
        self.settings = PlanSettings()
        self.messages: list[str] = []
        self.reset()

    def reset(self):
        """Forget every cached result (on scene close)."""
        self.patient = None
        self.normalization = None
        self._normalized_t1 = None
        self.frame_result = None
        self.registration_qc: dict = {}
        self._risk = (None, None, None)         # (key, RiskMap, vessels Volume)
        self._nuclei = (None, None)             # (segments' state, label map on the QSM grid)
        self._ventricle = (None, None)          # (T1 and landmarks, third ventricle for the VIM)
        self.side_plans: dict = {}              # side -> SidePlan shown in the scene

    # ---- helpers ---------------------------------------------------------------------------------
    def node(self, name: str, class_name: str = "vtkMRMLNode"):
        return mrml.node_by_name(self.scene, name, class_name)

    def task(self, name: str, stage: str, kwargs: dict, apply: Callable[[Any], Any]) -> StageTask:
        return StageTask(name, stage, kwargs, apply, python=self.python, log=self.messages)

    def run(self, task: StageTask):
        """Run a stage to completion on this thread and return its nodes (scripts, tests)."""
        return task.start(background=False).finish()

    def run_in_process(self, task: StageTask, on_poll=None):
        """Run a stage in a worker process and wait for it (scripts, tests of the process path)."""
        return task.start(background=True).wait(on_poll).finish()

    # ---- inputs ----------------------------------------------------------------------------------
    def gre_series_nodes(self, any_echo_node, part: str) -> list:
        """All echo nodes of ``part`` in the series of ``any_echo_node``, by echo index."""
        series = any_echo_node.GetAttribute("QSMPlanner.GRESeries") if any_echo_node is not None else None
        if not series:
            return [any_echo_node]
        found = [n for n in mrml.nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode")
                 if n.GetAttribute("QSMPlanner.GRESeries") == series and n.GetAttribute("QSMPlanner.Part") == part]
        return sorted(found, key=lambda n: int(n.GetAttribute("QSMPlanner.EchoIndex") or 0))

    def gre_nodes_for(self, any_gre_node) -> list:
        return self.gre_series_nodes(any_gre_node, "magnitude") + self.gre_series_nodes(any_gre_node, "phase")

    def echo_volumes(self, magnitude_node, phase_node, te_ms=None, b0_tesla=None):
        """The echo nodes as ``io.gre.EchoVolumes`` (read-only views of the nodes' voxels, no copy; stacked
        where a stage needs them). Nodes tagged by ``present.show_gre`` bring their whole series, TEs and
        field; volumes loaded by Slicer's DICOM module bring theirs from the DICOM headers (``dicom_gre``);
        plain volumes (e.g. one echo loaded from a file) need ``te_ms`` (list) and ``b0_tesla``."""
        from ..io.gre import EchoVolumes, b0_dir_from_geometry
        if magnitude_node is None or phase_node is None:
            raise InputError("select a magnitude and a phase echo volume", "Inputs")
        if not magnitude_node.GetAttribute("QSMPlanner.GRESeries") and self._from_dicom(magnitude_node):
            return self.dicom_gre(magnitude_node, phase_node, te_ms, b0_tesla)
        mags = self.gre_series_nodes(magnitude_node, "magnitude")
        phases = self.gre_series_nodes(phase_node, "phase")
        if len(mags) != len(phases):
            raise InputError(f"{len(mags)} magnitude echoes but {len(phases)} phase echoes", magnitude_node.GetName())
        if te_ms:
            te_s = np.asarray(te_ms, float) / 1000.0
        else:
            tes = [n.GetAttribute("QSMPlanner.EchoTime_s") for n in mags]
            if not all(tes):
                raise InputError("echo times unknown: enter them (ms)", magnitude_node.GetName())
            te_s = np.array([float(t) for t in tes])
        if len(te_s) != len(mags):
            raise InputError(f"{len(te_s)} echo times for {len(mags)} echoes", magnitude_node.GetName())
        mag_vols = [mrml.volume_from_node(n, copy=False) for n in mags]
        pha_vols = [mrml.volume_from_node(n, copy=False) for n in phases]
        ref = mag_vols[0]
        for v in mag_vols + pha_vols:
            if not v.same_geometry(ref):
                raise InputError("echo volumes differ in size or geometry", v.name)
        if b0_tesla is None:
            b0_tesla = float(magnitude_node.GetAttribute("QSMPlanner.B0_T") or 3.0)
        b0_dir = magnitude_node.GetAttribute("QSMPlanner.B0DirIJK")
        b0_dir = np.array(json.loads(b0_dir)) if b0_dir else b0_dir_from_geometry(ref.ras_from_ijk)
        return EchoVolumes([v.data for v in mag_vols], [v.data for v in pha_vols], te_s, float(b0_tesla),
                           ref.ras_from_ijk.copy(), b0_dir, "radians (from Slicer volumes)", magnitude_node.GetName())

    def _from_dicom(self, node) -> bool:
        return self.dicom_files is not None and bool(node.GetAttribute("DICOM.instanceUIDs"))

    def dicom_gre(self, magnitude_node, phase_node, te_ms=None, b0_tesla=None):
        """``MultiEchoGRE`` from volumes loaded by Slicer's DICOM module (one volume per echo and part): every
        DICOM-loaded volume on the selected volumes' grid joins, its echo time, part (magnitude/phase) and
        field strength read from the DICOM files behind it (``io.dicom_echo_info``); the phase is scaled
        to radians and the GE sign handled (``io.gre_from_echo_volumes``)."""
        from ..io import dicom_echo_info, gre_from_echo_volumes
        ref = mrml.volume_from_node(magnitude_node, copy=False)
        candidates = [n for n in mrml.nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode") if self._from_dicom(n)]
        infos, parts = {}, {"magnitude": [], "phase": []}
        for node in candidates:
            vol = mrml.volume_from_node(node, copy=False)
            if not vol.same_geometry(ref):
                continue
            files = list(self.dicom_files(node))
            if not files:
                raise InputError("the DICOM files behind this volume are not in the DICOM database", node.GetName())
            info = dicom_echo_info(files)
            part = info.part or ("magnitude" if node is magnitude_node else "phase" if node is phase_node else None)
            if part in parts:
                parts[part].append(vol.with_data(np.asarray(vol.data, np.float32)))
                infos.setdefault(part, []).append(info)
        if not parts["magnitude"] or not parts["phase"]:
            raise InputError("no magnitude and phase echoes loaded from DICOM on this grid", magnitude_node.GetName())
        te = None if not te_ms else [float(t) / 1000.0 for t in te_ms]
        return gre_from_echo_volumes(parts["magnitude"], parts["phase"], infos["magnitude"], infos["phase"],
                                     b0=b0_tesla, te=te)

    def gre_from_nodes(self, magnitude_node, phase_node, te_ms=None, b0_tesla=None):
        """``MultiEchoGRE`` from echo volume nodes (own scanner geometry, phase in radians)."""
        from ..io.gre import as_multi_echo
        return as_multi_echo(self.echo_volumes(magnitude_node, phase_node, te_ms, b0_tesla))

    def gre_files_task(self, directory=None, mag=None, phase=None, te_ms=None, b0_tesla=None,
                       series: str = P.GRE_SERIES) -> StageTask:
        """Read a multi-echo GRE (a BIDS/anat folder, a DICOM series folder with magnitude and phase, or
        ``mag``/``phase`` file lists with ``te_ms``) into echo nodes."""
        te = None if te_ms is None else [float(t) / 1000.0 for t in te_ms]
        if directory is not None and mag is None:
            kwargs = {"bids": str(directory), "b0": b0_tesla}
        else:
            kwargs = {"mag": [str(m) for m in mag], "phase": [str(p) for p in phase], "te": te, "b0": b0_tesla}

        def apply(gre):
            for w in getattr(gre, "warnings", []) or []:
                self.messages.append(f"GRE: {w}")
            if getattr(gre, "phase_scaling", ""):
                self.messages.append(f"GRE phase scaling: {gre.phase_scaling}")
            return (yield from P.show_gre_steps(self.scene, gre, series=series))
        return self.task("read GRE", "read_gre", kwargs, apply)

    def load_patient_nodes(self, patient, show_truth: bool = True, known_transforms: bool = False) -> dict:
        """A ``phantom.DigitalPatient`` as nodes: GRE echoes, T1, CT, AC/PC/MS and (``show_truth``) its true
        labels (hidden). ``known_transforms`` also places GRE and CT under their true transforms."""
        steps = self._patient_node_steps(patient, show_truth, known_transforms)
        return run_to_end(steps)

    def _patient_node_steps(self, patient, show_truth: bool, known_transforms: bool):
        """``load_patient_nodes`` one node at a time (a generator; its value is the nodes)."""
        nodes = {}
        t_gre = t_ct = None
        if known_transforms:
            t_gre = mrml.add_transform(self.scene, patient.transforms["t1_from_gre"], P.T1_FROM_GRE)
            t_ct = mrml.add_transform(self.scene, patient.transforms["t1_from_ct"], P.T1_FROM_CT)
            nodes[P.T1_FROM_GRE], nodes[P.T1_FROM_CT] = t_gre, t_ct
        echoes = yield from P.show_gre_steps(self.scene, patient.gre, parent_transform=t_gre)
        nodes.update({f"gre_{k}": v for k, v in echoes.items()})
        nodes[P.T1_NAME] = mrml.add_volume(self.scene, patient.t1, P.T1_NAME)
        yield
        if patient.ct is not None:
            nodes[P.CT_NAME] = mrml.add_volume(self.scene, patient.ct, P.CT_NAME, window=(-100.0, 1500.0),
                                               parent_transform=t_ct)
            yield
        nodes[P.LANDMARKS_NAME] = self.set_landmarks(patient.landmarks)
        if show_truth:
            labels = patient.truth["labels_gre"]
            present = set(np.unique(labels.data).astype(int))
            names = {int(v): str(n) for v, n in patient.label_names.items() if int(v) in present}
            nodes[P.TRUTH_NAME] = yield from mrml.add_segmentation_steps(self.scene, labels, names, P.TRUTH_NAME,
                                                                     parent_transform=t_gre)
            nodes[P.TRUTH_NAME].GetDisplayNode().SetVisibility(False)
        return nodes

    def digital_patient_task(self, seed: int = 0, small: bool = True, show_truth: bool = True,
                             known_transforms: bool = False) -> StageTask:
        def apply(patient):
            self.patient = patient
            return (yield from self._patient_node_steps(patient, show_truth, known_transforms))
        return self.task("digital patient", "digital_patient", {"seed": int(seed), "small": bool(small)}, apply)

    # ---- QSM -------------------------------------------------------------------------------------
    def qsm_task(self, magnitude_node, phase_node, te_ms=None, b0_tesla=None,
                 output_name: str = P.QSM_NAME) -> StageTask:
        """χ from the echo nodes (``workflow.stages.reconstruct_qsm`` with ``self.settings``), shown under
        the echoes' transform."""
        gre = self.echo_volumes(magnitude_node, phase_node, te_ms, b0_tesla)
        parent = magnitude_node.GetParentTransformNode()
        settings = self.settings
        source = {"QSMPlanner.MagnitudeNodeID": magnitude_node.GetID(), "QSMPlanner.PhaseNodeID": phase_node.GetID(),
                  "QSMPlanner.EchoTimes_ms": json.dumps([1000.0 * float(t) for t in gre.te_s]),
                  "QSMPlanner.B0_T": repr(float(gre.b0_tesla))}

        def apply(result):
            node = yield from P.show_qsm_steps(self.scene, result, parent, output_name,
                                               f"{settings.bfr}+{settings.inversion}")
            for key, value in source.items():   # the echoes it came from (R2* for the vein map)
                node.SetAttribute(key, value)
            for m in result.messages or []:
                self.messages.append(f"QSM: {m}")
            return node
        return self.task("QSM", "qsm", {"gre": gre, "settings": settings}, apply)

    # ---- registration ----------------------------------------------------------------------------
    def registration_task(self, fixed_node, moving_node, transform_name: str, moved_nodes=(),
                          harden: bool = False) -> StageTask:
        """Rigid registration of ``moving_node`` (own geometry) to ``fixed_node`` (the world): a GRE echo
        node by ``register_gre_to_t1`` (with its QSM's brain mask), anything else by ``register_to_t1``.
        The result is the transform node ``transform_name`` observed by ``moving_node`` and
        ``moved_nodes`` (hardened if ``harden``)."""
        if fixed_node is None or moving_node is None:
            raise InputError("select the fixed and moving volumes", "Registration")
        fixed = mrml.volume_from_node(fixed_node, world=True, copy=False)
        moving = mrml.volume_from_node(moving_node, copy=False)
        qsm_node = self._qsm_from(moving_node)
        if qsm_node is not None or moving_node.GetAttribute("QSMPlanner.GRESeries"):
            mask = P.brain_mask_of(qsm_node) if qsm_node is not None else None
            mask = mask.with_data(np.asarray(mask.data, np.uint8)) if mask is not None and mask.same_geometry(moving) else None
            stage, kwargs = "register_gre_to_t1", {"t1": fixed, "gre_magnitude": moving, "gre_brain_mask": mask}
        else:
            stage, kwargs = "register_to_t1", {"t1": fixed, "image": moving}

        def apply(result):
            node = self.set_transform(moving_node, result.fixed_from_moving, transform_name, moved_nodes, harden)
            self.registration_qc[_qc_key(transform_name)] = result.qc
            node.SetAttribute("QSMPlanner.MetricFinal", repr(float(result.metric_final)))
            return node
        return self.task(f"registration {transform_name}", stage, kwargs, apply)

    def _qsm_from(self, echo_node):
        """The QSM node computed from the echoes of ``echo_node`` (the same node, or its series), or None."""
        series = echo_node.GetAttribute("QSMPlanner.GRESeries")
        for n in mrml.nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode"):
            if n.GetAttribute("QSMPlanner.Quantity") != "susceptibility_ppm":
                continue
            source = self.scene.GetNodeByID(n.GetAttribute("QSMPlanner.MagnitudeNodeID") or "")
            if source is echo_node or (source is not None and series and source.GetAttribute("QSMPlanner.GRESeries") == series):
                return n
        return None

    def set_transform(self, moving_node, fixed_from_moving, transform_name: str, moved_nodes=(), harden: bool = False):
        """A linear transform node ``transform_name`` (fixed_from_moving, RAS 4x4) observed by
        ``moving_node``, ``moved_nodes`` and their QSM masks, or hardened into them (a frame pose stored on
        a hardened node follows it). Also for known transforms (e.g. ``registration.read_transform``)."""
        fixed_from_moving = np.asarray(fixed_from_moving, float)
        self.registration_qc[_qc_key(transform_name)] = {"given": True}   # until a registration's QC replaces it
        node = mrml.add_transform(self.scene, fixed_from_moving, transform_name)
        nodes = [n for n in (moving_node, *moved_nodes) if n is not None]
        for n in list(nodes):
            mask_id = n.GetAttribute("QSMPlanner.MaskNodeID")
            mask_node = self.scene.GetNodeByID(mask_id) if mask_id else None
            if mask_node is not None and mask_node not in nodes:
                nodes.append(mask_node)
        # the frame's nodes drawn on a CT go with it (the transform carries the model beneath it)
        ids = {n.GetID() for n in nodes}
        nodes += [n for n in mrml.nodes_by_class(self.scene, "vtkMRMLNode")
                  if n.GetAttribute(P.FRAME_OF_ATTRIBUTE) in ids and n.GetParentTransformNode() is
                  self.scene.GetNodeByID(n.GetAttribute(P.FRAME_OF_ATTRIBUTE)).GetParentTransformNode()]
        for n in nodes:
            pose = P.frame_pose(n)
            if harden and pose is not None:
                P.set_frame_pose(n, pose @ np.linalg.inv(fixed_from_moving))
            mrml.set_parent_transform(n, node, harden=harden)
        return node

    # ---- atlas and segmentation ------------------------------------------------------------------
    @staticmethod
    def _t1_key(t1_node):
        if t1_node is None:
            return None
        image = t1_node.GetImageData()
        return (t1_node.GetID(), image.GetMTime() if image is not None else 0,
                mrml.world_from_node_matrix(t1_node).round(6).tobytes())

    def set_normalization(self, normalization, t1_node):
        """Use ``normalization`` (an AtlasNormalization of ``t1_node``, or its SimpleITK transform T1 LPS ->
        MNI LPS, e.g. read from a file) for the atlas prior instead of normalizing the T1 again."""
        self.normalization = normalization
        self._normalized_t1 = self._t1_key(t1_node)

    def normalization_from_affine(self, t1_from_mni, t1_node):
        """A known affine MNI -> T1 (RAS 4x4) as the atlas normalization."""
        from ..registration.atlas import AtlasNormalization
        from ..registration.transform_io import sitk_affine_from_ras
        norm = AtlasNormalization(sitk_affine_from_ras(np.asarray(t1_from_mni, float)),
                                  mrml.volume_from_node(t1_node, world=True))
        self.set_normalization(norm, t1_node)
        return norm

    def segmentation_task(self, qsm_node, t1_node=None, prior_node=None, output_name: str = P.NUCLEI_NAME,
                          renormalize: bool = False, seeds_node=None) -> StageTask:
        """Nuclei on the QSM (``workflow.stages.prior_and_segment``). The prior: ``prior_node`` (labels on
        the QSM grid) or the CIT168 atlas through the T1's MNI normalization (computed once per T1) and the
        QSM's transform. ``seeds_node``: points labelled STN_L... inside structures (semi-automatic)."""
        if qsm_node is None:
            raise InputError("select the QSM volume", "Segmentation")
        qsm = mrml.volume_from_node(qsm_node, copy=False)
        world_from_qsm = mrml.world_from_node_matrix(qsm_node)
        seeds = None
        if seeds_node is not None and seeds_node.GetNumberOfControlPoints():
            from ..segmentation import seeds_to_qsm
            seeds = seeds_to_qsm(mrml.fiducials_to_dict(seeds_node, world=True), np.linalg.inv(world_from_qsm),
                                 seeds_node.GetName())
        prior = self._labels_on_grid(prior_node, qsm) if prior_node is not None else None
        if prior is None and t1_node is None:
            raise InputError("select the T1 (for the atlas prior) or a prior label map", "Segmentation")
        reuse = self.normalization if (not renormalize and prior is None and self.normalization is not None
                                       and self._normalized_t1 == self._t1_key(t1_node)) else None
        t1 = mrml.volume_from_node(t1_node, world=True, copy=False) if prior is None and reuse is None else None
        parent = qsm_node.GetParentTransformNode()

        def apply(result):
            norm, seg = result
            if norm is not None and norm is not self.normalization and prior is None:
                self.set_normalization(norm, t1_node)
            for m in seg.messages or []:
                self.messages.append(f"Segmentation: {m}")
            return P.show_segmentation(self.scene, seg.labelmap, seg.names, output_name, qsm_node, parent)
        return self.task("segmentation", "prior_and_segment",
                         {"chi": qsm, "t1": t1, "t1_from_gre": world_from_qsm, "t1_to_mni": reuse,
                          "prior_labels": prior, "seeds": seeds}, apply)

    def _labels_on_grid(self, node, reference: Volume) -> Volume:
        if node.IsA("vtkMRMLSegmentationNode"):
            return mrml.labelmap_from_segmentation(node, reference, mrml.segment_label_values(node), "prior")
        vol = mrml.volume_from_node(node)
        if not vol.same_geometry(reference):
            raise InputError("the prior label map is not on the QSM grid", node.GetName())
        return Volume(vol.data, reference.ras_from_ijk, "prior")

    def nuclei_labels(self, segmentation_node, qsm_node) -> Volume:
        """The nuclei as the planning stages read them: the segmentation node's segments (edits included)
        as a label map on the QSM grid, in the QSM's own coordinates (values ``segmentation.VALUES``)."""
        from ..segmentation.structures import VALUES
        if segmentation_node is None:
            raise InputError("run the segmentation first (or select a segmentation)", "Trajectory")
        if qsm_node is None:
            raise InputError("select the QSM volume", "Trajectory")
        seg_world = mrml.world_from_node_matrix(segmentation_node)
        qsm_world = mrml.world_from_node_matrix(qsm_node)
        if not np.allclose(seg_world, qsm_world, atol=1e-6):
            raise InputError("the segmentation and the QSM sit under different transforms", segmentation_node.GetName())
        key = (segmentation_node.GetID(), qsm_node.GetID(), mrml.ras_from_ijk_of(qsm_node).round(9).tobytes(),
               mrml.segments_state(segmentation_node))
        if self._nuclei[0] != key:
            qsm = mrml.volume_from_node(qsm_node, copy=False)
            self._nuclei = (key, mrml.labelmap_from_segmentation(segmentation_node, qsm, dict(VALUES), "nuclei"))
        return self._nuclei[1]

    # ---- landmarks -------------------------------------------------------------------------------
    def set_landmarks(self, points: dict, name: str = P.LANDMARKS_NAME):
        return P.show_landmarks(self.scene, points, name)

    def landmarks(self, node=None) -> dict:
        node = node or self.node(P.LANDMARKS_NAME, "vtkMRMLMarkupsFiducialNode")
        return {} if node is None else mrml.fiducials_to_dict(node, world=True)

    def _checked_landmarks(self, node=None) -> dict | None:
        lm = self.landmarks(node)
        return stages.check_landmarks(lm, (node.GetName() if node is not None else P.LANDMARKS_NAME)) if lm else None

    # ---- risk ------------------------------------------------------------------------------------
    def _risk_key(self, qsm_node, segmentation_node, t1_node):
        nuclei = self.nuclei_labels(segmentation_node, qsm_node)
        return (qsm_node.GetID(), qsm_node.GetImageData().GetMTime(),
                mrml.world_from_node_matrix(qsm_node).round(6).tobytes(), self._nuclei[0], self._t1_key(t1_node)), nuclei

    def risk_task(self, qsm_node, segmentation_node, t1_node=None) -> StageTask:
        """The risk map the entry search uses (``workflow.stages.risk_map``): veins from the QSM (and R2* of
        its GRE echoes), the segmented nuclei left out, ventricles and sulci from the T1, the brain mask."""
        key, nuclei = self._risk_key(qsm_node, segmentation_node, t1_node)
        qsm = mrml.volume_from_node(qsm_node, copy=False)
        brain = P.brain_mask_of(qsm_node)
        brain = None if brain is None else brain.with_data(np.asarray(brain.data, np.uint8))
        t1 = mrml.volume_from_node(t1_node, world=True, copy=False) if t1_node is not None else None
        gre = self._echoes_of(qsm_node)
        world = mrml.world_from_node_matrix(qsm_node)

        def apply(result):
            risk, vessels = result
            self._risk = (key, risk, vessels)
            return risk
        return self.task("risk map", "risk_map",
                         {"chi": qsm, "brain": brain, "nuclei": nuclei, "t1": t1, "t1_from_gre": world,
                          "gre": gre}, apply)

    def _echoes_of(self, qsm_node):
        """The echoes a QSM node was computed from (for R2*), or None when they are gone."""
        ids = [qsm_node.GetAttribute(k) for k in ("QSMPlanner.MagnitudeNodeID", "QSMPlanner.PhaseNodeID")]
        mag, phase = (self.scene.GetNodeByID(i) if i else None for i in ids)
        if mag is None or phase is None:
            return None
        te_ms = json.loads(qsm_node.GetAttribute("QSMPlanner.EchoTimes_ms") or "null")
        b0 = qsm_node.GetAttribute("QSMPlanner.B0_T")
        return self.echo_volumes(mag, phase, te_ms, float(b0) if b0 else None)

    def risk_map(self, qsm_node, segmentation_node, t1_node=None):
        """The cached risk map for these nodes (computed here, in this thread, if missing: scripts, tests)."""
        key, _ = self._risk_key(qsm_node, segmentation_node, t1_node)
        if self._risk[0] != key:
            self.run(self.risk_task(qsm_node, segmentation_node, t1_node))
        return self._risk[1]

    def has_risk_map(self, qsm_node, segmentation_node, t1_node=None) -> bool:
        return self._risk[0] == self._risk_key(qsm_node, segmentation_node, t1_node)[0]

    def vessels_model(self, qsm_node, name: str = P.VEINS_NAME):
        """The veins of the last risk map as a surface model (QSM grid, under the QSM's transform)."""
        vessels = self._risk[2]
        if vessels is None:
            raise InputError("compute the risk map first (rank entries)", "Trajectory")
        poly = mrml.mask_surface(vessels, step=1, iterations=10)
        return mrml.add_model(self.scene, poly, name, color=(0.45, 0.25, 0.85), opacity=0.9,
                              parent_transform=qsm_node.GetParentTransformNode())

    # ---- frame -----------------------------------------------------------------------------------
    def frame_task(self, ct_node) -> StageTask:
        """The frame registration on the CT (own geometry), stored on the CT node."""
        if ct_node is None:
            raise InputError("select the frame CT", "Frame")

        def apply(frame):
            self.frame_result = frame
            P.set_frame_pose(ct_node, frame.xyz_from_ras, frame.fre_mm, frame.system)
            P.show_frame(self.scene, frame, ct_node)
            return frame
        return self.task("frame registration", "register_frame",
                         {"ct": mrml.volume_from_node(ct_node, copy=False), "system": self.settings.frame_system},
                         apply)

    def set_frame(self, ct_node, xyz_from_ct_ras, system: str = "leksell"):
        """A known frame pose (CT RAS -> the native coordinates of ``system``) instead of registering the
        localizer."""
        self.frame_result = None
        P.set_frame_pose(ct_node, xyz_from_ct_ras, system=system)

    def frame_system(self, ct_node) -> str:
        """The frame registered on ``ct_node`` ("leksell", "crw", "brw")."""
        return P.frame_system_of(ct_node)

    def xyz_from_world(self, ct_node) -> np.ndarray | None:
        """World (T1) RAS -> the frame's native coordinates, through the CT's frame pose and its place in the
        world."""
        pose = P.frame_pose(ct_node)
        return None if pose is None else pose @ np.linalg.inv(mrml.world_from_node_matrix(ct_node))

    # ---- planning --------------------------------------------------------------------------------
    def plan_side_task(self, side: str, qsm_node, segmentation_node, t1_node=None, ct_node=None, target_ras=None,
                       entry_ras=None) -> StageTask:
        """``workflow.stages.plan_side`` on the nodes (the entry search runs in a worker in the panel): the
        suggested (or given) target, the ranked entries, the chosen (or given) entry, the electrode; shown as
        points, line, electrode and table. Its nodes include the ``SidePlan`` ("plan")."""
        if side not in SIDES:
            raise InputError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
        nuclei = self.nuclei_labels(segmentation_node, qsm_node)
        risk = self.risk_map(qsm_node, segmentation_node, t1_node)
        landmarks = self._checked_landmarks()
        ventricle = self.third_ventricle(t1_node, landmarks) if self.settings.target_kinds[side] == "vim" else None
        kwargs = {"side": side, "nuclei": nuclei, "risk": risk, "t1_from_gre": mrml.world_from_node_matrix(qsm_node),
                  "landmarks": landmarks, "xyz_from_world": self.xyz_from_world(ct_node), "settings": self.settings,
                  "target_ras": target_ras, "entry_ras": entry_ras, "frame_system": self.frame_system(ct_node),
                  "third_ventricle": ventricle}

        def apply(side_plan):
            self.side_plans[side] = side_plan
            nodes = P.show_side_plan(self.scene, side_plan)
            nodes["plan"] = side_plan
            return nodes
        return self.task(f"{side} trajectory", "plan_side", kwargs, apply)

    def plan_side(self, side: str, qsm_node, segmentation_node, t1_node=None, ct_node=None, target_ras=None,
                  entry_ras=None) -> dict:
        """``plan_side_task`` run here and now (scripts, tests); returns its nodes."""
        return self.run(self.plan_side_task(side, qsm_node, segmentation_node, t1_node, ct_node, target_ras,
                                            entry_ras))

    def third_ventricle(self, t1_node, landmarks):
        """The third ventricle's walls on the planning T1 (for the VIM), measured once per T1 and landmarks."""
        if t1_node is None or not landmarks:
            return None
        key = (self._t1_key(t1_node), tuple(np.round(np.concatenate([landmarks[k] for k in ("AC", "PC", "MS")]), 4)))
        if self._ventricle[0] != key:
            t1 = mrml.volume_from_node(t1_node, world=True, copy=False)
            self._ventricle = (key, stages.third_ventricle(t1, landmarks, self.settings, self.messages))
        return self._ventricle[1]

    def use_entry_task(self, side: str, entry_ras, qsm_node, segmentation_node, t1_node=None, ct_node=None):
        """``plan_side_task`` of ``side`` with its current target and the given entry (scored, not chosen)."""
        current = self.side_plans.get(side)
        if current is None:
            raise InputError(f"plan the {side} side first", "Trajectory")
        return self.plan_side_task(side, qsm_node, segmentation_node, t1_node, ct_node, current.target_ras, entry_ras)

    def use_entry(self, side: str, entry_ras, qsm_node, segmentation_node, t1_node=None, ct_node=None) -> dict:
        """``use_entry_task`` run here and now."""
        return self.run(self.use_entry_task(side, entry_ras, qsm_node, segmentation_node, t1_node, ct_node))

    def trajectories(self) -> dict:
        """{side letter: (target_ras, entry_ras)} from the Targets/Entries point lists (world RAS)."""
        t = self.node(P.TARGETS_NAME, "vtkMRMLMarkupsFiducialNode")
        e = self.node(P.ENTRIES_NAME, "vtkMRMLMarkupsFiducialNode")
        if t is None or e is None:
            return {}
        tp, ep = mrml.fiducials_to_dict(t, world=True), mrml.fiducials_to_dict(e, world=True)
        return {s: (tp[f"target_{s}"], ep[f"entry_{s}"]) for s in SIDES_LETTERS.values()
                if f"target_{s}" in tp and f"entry_{s}" in ep}

    def moved_sides(self) -> dict:
        """{side: (target, entry)} of the sides whose target or entry point was moved in the views since
        they were planned (world RAS)."""
        moved = {}
        points = self.trajectories()
        for side, sp in self.side_plans.items():
            pts = points.get(SIDES_LETTERS[side])
            if pts is not None and (np.linalg.norm(pts[0] - sp.target_ras) > 1e-3
                                    or np.linalg.norm(pts[1] - sp.chosen.entry_ras) > 1e-3):
                moved[side] = pts
        return moved

    def sync_with_points(self, qsm_node, segmentation_node, t1_node=None, ct_node=None) -> list:
        """Re-plan here and now every side whose points were moved (scored as the surgeon's trajectory).
        Returns the sides re-planned."""
        moved = self.moved_sides()
        for side, (target, entry) in moved.items():
            self.plan_side(side, qsm_node, segmentation_node, t1_node, ct_node, target, entry)
        return list(moved)

    def distance_profile(self, side: str, step_mm: float = 0.5):
        """Distance (mm) from the planned trajectory to the nearest vessel, from target to entry: a table
        ``Profile_<S>`` (depth above the target, centre line to vessel, instrument surfaces to vessel) and
        a plot chart. Returns (table, chart or None)."""
        sp = self.side_plans.get(side)
        if sp is None:
            raise InputError(f"plan the {side} side first", "Trajectory")
        s = SIDES_LETTERS[side]
        risk = self._risk[1]
        target, entry = sp.target_ras, sp.chosen.entry_ras
        length = float(np.linalg.norm(entry - target))
        depth = np.arange(0.0, length + 1e-9, step_mm)
        pts = target + np.outer(depth / length, entry - target)
        centre = risk.distance("vessels", pts, outside=np.nan)
        prof = sp.chosen.profile or {}
        clearance = np.interp(depth, prof["depth_mm"], prof["vessels_clearance_mm"]) \
            if "vessels_clearance_mm" in prof else np.full(len(depth), np.nan)
        rows = [{"depth_mm": float(a), "vessel_distance_mm": float(b), "vessel_clearance_mm": float(c)}
                for a, b, c in zip(depth, centre, clearance)]
        table = mrml.add_table(self.scene, rows, f"Profile_{s}")
        table.SetAttribute("QSMPlanner.Safe", "yes" if sp.chosen.safe else "no")
        chart = mrml.add_plot_chart(self.scene, table, f"Profile_{s} chart", "depth_mm",
                                    {"vessel_distance_mm": (0.1, 0.4, 0.9), "vessel_clearance_mm": (0.9, 0.3, 0.1)},
                                    title=f"Trajectory {s}: distance to the nearest vessel",
                                    x_title="depth above target (mm)", y_title="distance (mm)")
        return table, chart

    def probe_eye_slice(self, slice_node, side: str, depth_mm: float = 0.0):
        """Point ``slice_node`` perpendicular to the planned trajectory, ``depth_mm`` above the target."""
        traj = self.trajectories().get(SIDES_LETTERS[side])
        if traj is None:
            raise InputError(f"no trajectory for the {side} side", "Trajectory")
        target, entry = traj
        n = (entry - target) / np.linalg.norm(entry - target)
        t = np.array([1.0, 0.0, 0.0]) - n[0] * n
        if np.linalg.norm(t) < 1e-3:
            t = np.array([0.0, 1.0, 0.0]) - n[1] * n
        t /= np.linalg.norm(t)
        p = target + depth_mm * n
        slice_node.SetSliceToRASByNTP(*n, *t, *p, 0)
        return slice_node

    # ---- the plan document -----------------------------------------------------------------------
    def document(self, ct_node=None, qsm_node=None, landmarks_node=None) -> dict:
        """The plan document of the sides planned so far (``workflow.plan_document``: the schema of
        ``qsmplanner run``'s plan.json)."""
        if not self.side_plans:
            raise InputError("plan at least one side first", "Trajectory")
        lm = self._checked_landmarks(landmarks_node) or {}
        t1_from_gre = mrml.world_from_node_matrix(qsm_node) if qsm_node is not None else None
        t1_from_ct = mrml.world_from_node_matrix(ct_node) if ct_node is not None else None
        xyz_from_t1 = self.xyz_from_world(ct_node)
        system = self.frame_system(ct_node)
        sides = {s: stages.update_coordinates(self.side_plans[s], lm or None, xyz_from_t1, self.settings, system)
                 for s in SIDES if s in self.side_plans}
        return plan_document(sides, self.settings, lm, "given" if lm else "none", t1_from_gre, t1_from_ct,
                             xyz_from_t1, self.frame_result, self.registration_qc, list(self.messages),
                             frame_system=system if xyz_from_t1 is not None else None)

    def coordinates_table(self, ct_node=None, qsm_node=None):
        """The coordinate table of ``document`` as a table node (every column names its system)."""
        return P.show_coordinates(self.scene, self.document(ct_node, qsm_node))

    def save(self, out_dir, qsm_node, segmentation_node, t1_node=None, ct_node=None) -> dict:
        """plan.json, plan.csv and report.html (the command line's writers) and the open scene as
        QSMPlanner.mrb into ``out_dir``; moved points are re-planned first. Returns {name: path}."""
        self.sync_with_points(qsm_node, segmentation_node, t1_node, ct_node)
        doc = self.document(ct_node, qsm_node)
        qsm = mrml.volume_from_node(qsm_node)
        paths = write_plan_files(out_dir, doc, qsm=qsm, t1_from_gre=mrml.world_from_node_matrix(qsm_node),
                                 labels=self.nuclei_labels(segmentation_node, qsm_node), vessels=self._risk[2],
                                 sides=self.side_plans)
        P.show_coordinates(self.scene, doc)
        paths["QSMPlanner.mrb"] = mrml.save_mrb(self.scene, Path(out_dir) / "QSMPlanner.mrb")
        return paths

    def save_scene(self, path):
        return mrml.save_mrb(self.scene, path)

