"""``PlannerLogic``: the QSMPlanner module's work on a vtkMRMLScene — MRML nodes in, QSMPlannerLib calls,
MRML nodes out. The Slicer module's Logic and Widget only call this; it runs headless on slicer-core.

Spaces: the scene's world is the planning T1's RAS (mm). The GRE/QSM and the CT keep their own scanner
geometry and sit under linear transform nodes ``T1_from_GRE`` / ``T1_from_CT`` (observed, not hardened
unless asked). Leksell frame coordinates (X, Y, Z mm) are never RAS: they appear only in the table and
the frame JSON; the frame pose is stored as the matrix ``LeksellXYZ_from_CT`` (an attribute string,
not a transform node, so nothing in the scene is ever drawn in frame space by mistake).

Long stages run as ``StageTask``s: ``compute`` in a worker thread (QSMPlannerLib only, no MRML), then
``apply`` on the main thread (MRML only). ``Progress`` carries progress and cancellation.
"""
from __future__ import annotations

import json
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import InputError, ProcessingError
from ..progress import Cancelled, Progress
from ..volume import Volume
from . import mrml

# Node names (one place, so the widget, the tests and the saved scenes agree).
GRE_SERIES = "GRE"
QSM_NAME = "QSM"
T1_NAME = "T1"
CT_NAME = "CT"
T1_FROM_GRE = "T1_from_GRE"
T1_FROM_CT = "T1_from_CT"
NUCLEI_NAME = "Nuclei"
TRUTH_NAME = "Truth labels"
LANDMARKS_NAME = "AC-PC-MS"
TARGETS_NAME = "Targets"
ENTRIES_NAME = "Entries"
TABLE_NAME = "Coordinates"
FRAME_ATTRIBUTE = "QSMPlanner.LeksellXYZ_from_CT"
SIDES = {"left": "L", "right": "R"}


# --------------------------------------------------------------------------------------------------
# background tasks
# --------------------------------------------------------------------------------------------------
@dataclass
class StageTask:
    """One stage: ``compute(progress)`` in a worker thread, then ``apply(result)`` on the caller's thread.

    The widget starts it, polls ``fraction``/``message``/``done`` with a timer, and calls ``finish()``
    when done. ``cancel()`` asks the computation to stop at its next progress check."""
    name: str
    compute: Callable[[Progress], Any]
    apply: Callable[[Any], Any]
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: BaseException | None = None
    error_trace: str = ""
    cancel_event: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    started_s: float = 0.0
    elapsed_s: float = 0.0

    def _report(self, fraction: float, message: str):
        self.fraction = fraction
        if message:
            self.message = message

    def _run(self):
        progress = Progress(self._report, self.cancel_event)
        try:
            self.result = self.compute(progress)
            self._report(1.0, "done")
        except BaseException as exc:  # handed to finish() on the main thread
            self.error = exc
            self.error_trace = traceback.format_exc()
        finally:
            self.elapsed_s = time.monotonic() - self.started_s

    def start(self, background: bool = True) -> "StageTask":
        self.started_s = time.monotonic()
        if background:
            self._thread = threading.Thread(target=self._run, name=f"QSMPlanner-{self.name}", daemon=True)
            self._thread.start()
        else:
            self._run()
        return self

    @property
    def done(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled)

    def cancel(self):
        self.cancel_event.set()

    def wait(self, timeout_s: float | None = None) -> "StageTask":
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self

    def finish(self):
        """Main thread: raise the worker's error, else turn its result into nodes (returned)."""
        if not self.done:
            raise ProcessingError(f"{self.name} is still running")
        if self.error is not None:
            raise self.error
        return self.apply(self.result)


# --------------------------------------------------------------------------------------------------
# electrode model (display only)
# --------------------------------------------------------------------------------------------------
def electrode_polydata(target_ras, entry_ras, *, diameter_mm=1.27, contact_length_mm=1.5,
                       contact_spacing_mm=0.5, n_contacts=4, tip_mm=1.5, extend_mm=20.0):
    """vtkPolyData pair (lead body, contacts) for a cylindrical DBS lead (default: 3389-like geometry)
    whose tip is at ``target_ras`` pointing away from ``entry_ras`` (RAS mm). The body runs from the tip
    to ``extend_mm`` beyond the entry."""
    import vtk
    target = np.asarray(target_ras, float)
    entry = np.asarray(entry_ras, float)
    axis = entry - target
    length = float(np.linalg.norm(axis))
    if length < 1e-6:
        raise InputError("entry and target coincide", "trajectory")
    axis /= length

    def tube(p0, p1, radius, sides=24):
        line = vtk.vtkLineSource()
        line.SetPoint1(*p0)
        line.SetPoint2(*p1)
        t = vtk.vtkTubeFilter()
        t.SetInputConnection(line.GetOutputPort())
        t.SetRadius(radius)
        t.SetNumberOfSides(sides)
        t.CappingOn()
        t.Update()
        out = vtk.vtkPolyData()
        out.DeepCopy(t.GetOutput())
        return out

    body = tube(target, entry + axis * extend_mm, diameter_mm / 2.0)
    contacts = vtk.vtkAppendPolyData()
    for c in range(n_contacts):
        start = tip_mm + c * (contact_length_mm + contact_spacing_mm)
        contacts.AddInputData(tube(target + axis * start, target + axis * (start + contact_length_mm),
                                   diameter_mm / 2.0 + 0.05))
    contacts.Update()
    out_contacts = vtk.vtkPolyData()
    out_contacts.DeepCopy(contacts.GetOutput())
    return body, out_contacts


def standard_entry(target_ras, side: str, depth_mm: float = 70.0, lateral_deg: float = 20.0,
                   anterior_deg: float = 60.0) -> np.ndarray:
    """A textbook frontal entry for an STN target when no entry search is available: ``depth_mm`` from the
    target along a direction tilted ``lateral_deg`` from the mid-sagittal plane (outward) and
    ``anterior_deg`` above the axial plane, forward (RAS mm). A starting point only."""
    sign = -1.0 if side in ("left", "L") else 1.0
    lat, ant = np.deg2rad(lateral_deg), np.deg2rad(anterior_deg)
    d = np.array([sign * np.sin(lat), np.cos(lat) * np.cos(ant), np.cos(lat) * np.sin(ant)])
    return np.asarray(target_ras, float) + depth_mm * d / np.linalg.norm(d)


def _ring_arc_values(ra) -> tuple[float, float]:
    """(ring, arc) in degrees from stereotaxy.ring_arc's result (dict, object or pair)."""
    for ring_key, arc_key in (("ring_deg", "arc_deg"), ("ring", "arc")):
        if isinstance(ra, dict) and ring_key in ra:
            return float(ra[ring_key]), float(ra[arc_key])
        if hasattr(ra, ring_key):
            return float(getattr(ra, ring_key)), float(getattr(ra, arc_key))
    return float(ra[0]), float(ra[1])


# --------------------------------------------------------------------------------------------------
# the logic
# --------------------------------------------------------------------------------------------------
class PlannerLogic:
    """Maps MRML nodes to QSMPlannerLib calls and results back to nodes, on ``scene``."""

    def __init__(self, scene=None):
        if scene is None:
            import slicer
            scene = getattr(slicer, "mrmlScene", None) or mrml.new_scene()
        self.scene = scene
        self.segmentation_result = None   # last NucleiSegmentation (for target suggestion)
        self.frame_result = None          # last FrameRegistration
        self.normalization = None         # last AtlasNormalization (of the T1 node in _normalized_t1)
        self._normalized_t1 = None
        self.anatomy_node = None          # the planning T1 (ventricles and sulci for the risk map)
        self.qsm_result = None            # last QSMResult (its brain mask guides registration and risk)
        self.electrode = "medtronic_3389"  # planning.ELECTRODES key of the lead drawn on trajectories
        self.margin_mm = 3.0              # safety margin (mm) from instrument surfaces to vessels
        self._risk_cache = (None, None)   # (key, RiskMap)
        self.searches: dict = {}          # side letter -> last planning.EntrySearch
        self.messages: list[str] = []

    # ---- helpers ---------------------------------------------------------------------------------
    def node(self, name: str, class_name: str = "vtkMRMLNode"):
        return mrml.node_by_name(self.scene, name, class_name)

    def run(self, task: StageTask):
        """Run a stage to completion on this thread (tests, scripts) and return its nodes."""
        return task.start(background=False).finish()

    def _log(self, message: str):
        self.messages.append(message)

    # ---- inputs ----------------------------------------------------------------------------------
    def add_gre_nodes(self, gre, series: str = GRE_SERIES, parent_transform=None) -> dict:
        """One scalar volume per echo and part (``<series>_magnitude_echoN``, ``<series>_phase_echoN``),
        each tagged with its echo index, TE (s), field (T) and B0 direction in the voxel frame, so that
        ``gre_from_nodes`` can put the acquisition back together."""
        nodes = {"magnitude": [], "phase": []}
        for part, arr in (("magnitude", gre.magnitude), ("phase", gre.phase_rad)):
            for e in range(gre.n_echoes):
                vol = Volume(np.asarray(arr[..., e], np.float32), gre.ras_from_ijk, "")
                node = mrml.add_volume(self.scene, vol, f"{series}_{part}_echo{e + 1}",
                                       parent_transform=parent_transform)
                node.SetAttribute("QSMPlanner.GRESeries", series)
                node.SetAttribute("QSMPlanner.Part", part)
                node.SetAttribute("QSMPlanner.EchoIndex", str(e))
                node.SetAttribute("QSMPlanner.EchoTime_s", repr(float(gre.te_s[e])))
                node.SetAttribute("QSMPlanner.B0_T", repr(float(gre.b0_tesla)))
                node.SetAttribute("QSMPlanner.B0DirIJK", json.dumps([float(v) for v in gre.b0_dir_ijk]))
                nodes[part].append(node)
        return nodes

    def gre_series_nodes(self, any_echo_node, part: str) -> list:
        """All echo nodes of ``part`` in the series of ``any_echo_node``, by echo index."""
        series = any_echo_node.GetAttribute("QSMPlanner.GRESeries")
        if not series:
            return [any_echo_node]
        found = [n for n in mrml.nodes_by_class(self.scene, "vtkMRMLScalarVolumeNode")
                 if n.GetAttribute("QSMPlanner.GRESeries") == series
                 and n.GetAttribute("QSMPlanner.Part") == part]
        return sorted(found, key=lambda n: int(n.GetAttribute("QSMPlanner.EchoIndex") or 0))

    def gre_from_nodes(self, magnitude_node, phase_node, te_ms=None, b0_tesla=None):
        """``MultiEchoGRE`` from echo volume nodes (own scanner geometry, phase in radians).

        Nodes tagged by ``add_gre_nodes`` bring their whole series, TEs and field; plain volumes (e.g. a
        single echo loaded from a file) need ``te_ms`` (list) and ``b0_tesla``."""
        from ..io.gre import MultiEchoGRE, b0_dir_from_geometry
        if magnitude_node is None or phase_node is None:
            raise InputError("select a magnitude and a phase echo volume", "Inputs")
        mags = self.gre_series_nodes(magnitude_node, "magnitude")
        phases = self.gre_series_nodes(phase_node, "phase")
        if len(mags) != len(phases):
            raise InputError(f"{len(mags)} magnitude echoes but {len(phases)} phase echoes",
                             magnitude_node.GetName())
        if te_ms:
            te_s = np.asarray(te_ms, float) / 1000.0
        else:
            tes = [n.GetAttribute("QSMPlanner.EchoTime_s") for n in mags]
            if not all(tes):
                raise InputError("echo times unknown: enter them (ms)", magnitude_node.GetName())
            te_s = np.array([float(t) for t in tes])
        if len(te_s) != len(mags):
            raise InputError(f"{len(te_s)} echo times for {len(mags)} echoes", magnitude_node.GetName())
        mag_vols = [mrml.volume_from_node(n) for n in mags]
        pha_vols = [mrml.volume_from_node(n) for n in phases]
        ref = mag_vols[0]
        for v in mag_vols + pha_vols:
            if not v.same_geometry(ref):
                raise InputError("echo volumes differ in size or geometry", v.name)
        if b0_tesla is None:
            b0_tesla = float(magnitude_node.GetAttribute("QSMPlanner.B0_T") or 3.0)
        b0_dir = magnitude_node.GetAttribute("QSMPlanner.B0DirIJK")
        b0_dir = np.array(json.loads(b0_dir)) if b0_dir else b0_dir_from_geometry(ref.ras_from_ijk)
        return MultiEchoGRE(
            magnitude=np.stack([v.data for v in mag_vols], axis=3).astype(np.float32),
            phase_rad=np.stack([v.data for v in pha_vols], axis=3).astype(np.float32),
            te_s=te_s, b0_tesla=float(b0_tesla), ras_from_ijk=ref.ras_from_ijk.copy(),
            b0_dir_ijk=b0_dir, phase_scaling="radians (from Slicer volumes)",
            source=magnitude_node.GetName())

    def gre_files_task(self, directory=None, mag=None, phase=None, te_ms=None, b0_tesla=None,
                       series: str = GRE_SERIES) -> StageTask:
        """Read a multi-echo GRE with ``io.load_gre`` — a BIDS (or anat) ``directory``, a DICOM series
        directory holding magnitude and phase, or ``mag``/``phase`` file lists with ``te_ms`` — and add it
        as echo nodes (``add_gre_nodes``)."""
        def compute(progress):
            from ..io import load_gre
            te = None if te_ms is None else [float(t) / 1000.0 for t in te_ms]
            progress.update(0.0, "reading the GRE")
            if directory is not None and mag is None:
                try:
                    return load_gre(bids=directory, b0=b0_tesla)
                except InputError:
                    return load_gre(mag=[directory], phase=[directory], te=te, b0=b0_tesla)
            return load_gre(mag=list(mag), phase=list(phase), te=te, b0=b0_tesla)

        def apply(gre):
            for w in getattr(gre, "warnings", []) or []:
                self._log(f"GRE: {w}")
            if getattr(gre, "phase_scaling", ""):
                self._log(f"GRE phase scaling: {gre.phase_scaling}")
            return self.add_gre_nodes(gre, series=series)
        return StageTask("read GRE", compute, apply)

    def load_patient_nodes(self, patient, show_truth: bool = True, known_transforms: bool = False) -> dict:
        """Add a ``phantom.DigitalPatient`` as nodes: GRE echoes, T1, CT, AC/PC/MS, and (``show_truth``)
        its true labels as a segmentation. ``known_transforms`` also places GRE and CT under their true
        transforms (otherwise the registration stage computes them)."""
        nodes = {}
        t_gre = t_ct = None
        if known_transforms:
            t_gre = mrml.add_transform(self.scene, patient.transforms["t1_from_gre"], T1_FROM_GRE)
            t_ct = mrml.add_transform(self.scene, patient.transforms["t1_from_ct"], T1_FROM_CT)
            nodes[T1_FROM_GRE], nodes[T1_FROM_CT] = t_gre, t_ct
        nodes.update({f"gre_{k}": v for k, v in self.add_gre_nodes(patient.gre, parent_transform=t_gre).items()})
        nodes[T1_NAME] = mrml.add_volume(self.scene, patient.t1, T1_NAME)
        self.anatomy_node = nodes[T1_NAME]
        if patient.ct is not None:
            nodes[CT_NAME] = mrml.add_volume(self.scene, patient.ct, CT_NAME, window=(-100.0, 1500.0),
                                             parent_transform=t_ct)
        nodes[LANDMARKS_NAME] = self.set_landmarks(patient.landmarks)
        if show_truth:
            labels = patient.truth["labels_gre"]
            names = {int(v): str(n) for v, n in patient.label_names.items()
                     if int(v) in set(np.unique(labels.data).astype(int))}
            nodes[TRUTH_NAME] = mrml.add_segmentation(self.scene, labels, names, TRUTH_NAME,
                                                      parent_transform=t_gre)
            nodes[TRUTH_NAME].GetDisplayNode().SetVisibility(False)
        return nodes

    def digital_patient_task(self, seed: int = 0, small: bool = True, show_truth: bool = True,
                             known_transforms: bool = False) -> StageTask:
        def compute(progress):
            from ..phantom import make_patient
            return make_patient(seed=seed, small=small, progress=progress)

        def apply(patient):
            self.patient = patient
            return self.load_patient_nodes(patient, show_truth=show_truth,
                                           known_transforms=known_transforms)
        return StageTask("digital patient", compute, apply)

    # ---- QSM -------------------------------------------------------------------------------------
    def qsm_task(self, magnitude_node, phase_node, te_ms=None, b0_tesla=None, bfr: str = "pdf",
                 inversion: str = "tv", output_name: str = QSM_NAME) -> StageTask:
        gre = self.gre_from_nodes(magnitude_node, phase_node, te_ms, b0_tesla)
        parent = magnitude_node.GetParentTransformNode()

        def compute(progress):
            from ..qsm import reconstruct_qsm
            return reconstruct_qsm(gre, bfr=bfr, inversion=inversion, progress=progress)

        def apply(result):
            self.qsm_result = result
            node = mrml.add_volume(self.scene, result.chi_ppm, output_name, kind="qsm",
                                   parent_transform=parent)
            node.SetAttribute("QSMPlanner.Method", f"{bfr}+{inversion}")
            mask = getattr(result, "mask", None)
            if isinstance(mask, Volume):
                mask_node = mrml.add_volume(self.scene, mask.with_data(np.asarray(mask.data, np.uint8)),
                                            f"{output_name} mask", kind="labelmap", parent_transform=parent)
                node.SetAttribute("QSMPlanner.MaskNodeID", mask_node.GetID())
            for m in getattr(result, "messages", []) or []:
                self._log(f"QSM: {m}")
            return node
        return StageTask("QSM", compute, apply)

    # ---- registration ----------------------------------------------------------------------------
    def registration_task(self, fixed_node, moving_node, transform_name: str, moved_nodes=(),
                          harden: bool = False) -> StageTask:
        """Rigid registration of ``moving_node`` (own geometry) to ``fixed_node`` (world): a transform
        node ``transform_name`` (fixed_from_moving, RAS) observed by ``moving_node`` and ``moved_nodes``
        (hardened if ``harden``)."""
        if fixed_node is None or moving_node is None:
            raise InputError("select the fixed and moving volumes", "Registration")
        fixed = mrml.volume_from_node(fixed_node, world=True)
        moving = mrml.volume_from_node(moving_node)
        gre_mask = None
        if moving_node.GetAttribute("QSMPlanner.GRESeries"):
            mask = getattr(self.qsm_result, "mask", None)
            gre_mask = mask if isinstance(mask, Volume) and mask.same_geometry(moving) else None

        def compute(progress):
            from ..registration import register_gre_to_t1, register_to_t1
            if moving_node.GetAttribute("QSMPlanner.GRESeries"):
                return register_gre_to_t1(fixed, moving, gre_mask, progress=progress, messages=self.messages)
            return register_to_t1(fixed, moving, progress=progress, messages=self.messages)

        def apply(result):
            node = self.set_transform(moving_node, result.fixed_from_moving, transform_name, moved_nodes, harden)
            node.SetAttribute("QSMPlanner.MetricFinal", repr(float(result.metric_final)))
            return node
        return StageTask(f"registration {transform_name}", compute, apply)

    def set_transform(self, moving_node, fixed_from_moving, transform_name: str, moved_nodes=(),
                      harden: bool = False):
        """A linear transform node ``transform_name`` (fixed_from_moving, RAS 4x4: the moving node's RAS to
        the world) observed by ``moving_node``, ``moved_nodes`` and their QSM masks, or hardened into them
        (``harden``; a frame pose stored on a hardened node follows it). Used by ``registration_task`` and
        for known transforms (e.g. read with ``registration.read_transform``)."""
        fixed_from_moving = np.asarray(fixed_from_moving, float)
        node = mrml.add_transform(self.scene, fixed_from_moving, transform_name)
        nodes = [n for n in (moving_node, *moved_nodes) if n is not None]
        for n in list(nodes):  # a QSM's brain mask goes with it
            mask_id = n.GetAttribute("QSMPlanner.MaskNodeID")
            mask_node = self.scene.GetNodeByID(mask_id) if mask_id else None
            if mask_node is not None and mask_node not in nodes:
                nodes.append(mask_node)
        for n in nodes:
            frame = n.GetAttribute(FRAME_ATTRIBUTE)
            if harden and frame:  # the frame pose refers to the node's coordinates: follow them
                moved = np.array(json.loads(frame)) @ np.linalg.inv(fixed_from_moving)
                n.SetAttribute(FRAME_ATTRIBUTE, json.dumps(moved.tolist()))
            mrml.set_parent_transform(n, node, harden=harden)
        return node

    def gre_nodes_for(self, any_gre_node) -> list:
        return self.gre_series_nodes(any_gre_node, "magnitude") + self.gre_series_nodes(any_gre_node, "phase")

    # ---- segmentation ----------------------------------------------------------------------------
    def set_normalization(self, normalization, t1_node):
        """Use ``normalization`` (registration.AtlasNormalization of ``t1_node``'s world image) for the
        atlas prior of later segmentations instead of normalizing the T1 again."""
        self.normalization = normalization
        self._normalized_t1 = self._t1_key(t1_node)

    @staticmethod
    def _t1_key(t1_node):
        """What a normalization depends on: the node, its voxels and its place in the world."""
        if t1_node is None:
            return None
        image = t1_node.GetImageData()
        return (t1_node.GetID(), image.GetMTime() if image is not None else 0,
                mrml.world_from_node_matrix(t1_node).round(6).tobytes())

    def normalization_from_affine(self, t1_from_mni, t1_node):
        """A known affine MNI -> T1 (RAS 4x4) as the atlas normalization (no deformable part)."""
        from ..registration.atlas import AtlasNormalization
        from ..registration.transform_io import sitk_affine_from_ras
        norm = AtlasNormalization(sitk_affine_from_ras(np.asarray(t1_from_mni, float)),
                                  mrml.volume_from_node(t1_node, world=True))
        self.set_normalization(norm, t1_node)
        return norm

    def segmentation_task(self, qsm_node, t1_node=None, prior_node=None,
                          output_name: str = NUCLEI_NAME, renormalize: bool = False,
                          seeds_node=None) -> StageTask:
        """Segment STN/SN/RN on the QSM. The prior (CIT168 labels on the QSM grid) comes from
        ``prior_node`` (a labelmap or segmentation on the QSM grid) or from normalizing ``t1_node`` to
        MNI and carrying the atlas into the QSM through its transform. ``seeds_node``: optional point
        list, one point inside a structure per control point labelled with its name (STN_L, ...): the
        semi-automatic mode, where the surgeon's point places the structure instead of the prior."""
        if qsm_node is None:
            raise InputError("select the QSM volume", "Segmentation")
        qsm = mrml.volume_from_node(qsm_node)
        qsm_world = mrml.volume_from_node(qsm_node, world=True)
        parent = qsm_node.GetParentTransformNode()
        world_from_qsm = qsm_world.ras_from_ijk @ np.linalg.inv(qsm.ras_from_ijk)
        seeds = None
        if seeds_node is not None and seeds_node.GetNumberOfControlPoints():
            from ..segmentation import seeds_to_qsm
            seeds = seeds_to_qsm(mrml.fiducials_to_dict(seeds_node, world=True), np.linalg.inv(world_from_qsm),
                                 seeds_node.GetName())
        prior = None
        if prior_node is not None:
            prior = self._labels_on_grid(prior_node, qsm)
        elif t1_node is None:
            raise InputError("select the T1 (for the atlas prior) or a prior label map", "Segmentation")
        t1 = mrml.volume_from_node(t1_node, world=True) if t1_node is not None and prior is None else None
        # a normalization of this T1 already computed (or given) is reused: it is the slow part
        reuse = self.normalization if (not renormalize and prior is None and self.normalization is not None
                                       and self._normalized_t1 == self._t1_key(t1_node)) else None

        def compute(progress):
            from ..segmentation import segment_nuclei
            labels = prior
            norm = None
            if labels is None:
                norm = reuse
                if norm is None:
                    from ..registration import normalize_to_mni
                    norm = normalize_to_mni(t1, progress=progress.sub(0.0, 0.7))
                from ..segmentation.prior import atlas_prior
                labels = atlas_prior(qsm, norm.transform, t1_from_reference=world_from_qsm)
                progress = progress.sub(0.7, 1.0)
            return norm, segment_nuclei(qsm, labels, seeds=seeds, progress=progress)

        def apply(result):
            norm, seg = result
            if norm is not None and norm is not self.normalization:
                self.set_normalization(norm, t1_node)
            self.segmentation_result = seg
            names = seg.names if isinstance(seg.names, dict) else {i + 1: n for i, n in enumerate(seg.names)}
            node = mrml.add_segmentation(self.scene, seg.labelmap, names, output_name,
                                         reference_volume_node=qsm_node, parent_transform=parent)
            for m in getattr(seg, "messages", []) or []:
                self._log(f"Segmentation: {m}")
            return node
        return StageTask("segmentation", compute, apply)

    def _labels_on_grid(self, node, reference: Volume) -> Volume:
        if node.IsA("vtkMRMLSegmentationNode"):
            values = mrml.segment_label_values(node)
            out = np.zeros(reference.shape3, np.int16)
            for name, value in values.items():
                out[mrml.segment_mask(node, name, reference)] = value
            return Volume(out, reference.ras_from_ijk, "prior")
        vol = mrml.volume_from_node(node)
        if not vol.same_geometry(reference):
            raise InputError("the prior label map is not on the QSM grid", node.GetName())
        return Volume(vol.data, reference.ras_from_ijk, "prior")

    # ---- landmarks -------------------------------------------------------------------------------
    def set_landmarks(self, points: dict, name: str = LANDMARKS_NAME):
        """AC, PC, MS (mid-sagittal point) in world (T1) RAS mm as a locked-free fiducial list."""
        ordered = {k: points[k] for k in ("AC", "PC", "MS") if k in points}
        return mrml.add_fiducials(self.scene, ordered, name, color=(1.0, 0.85, 0.1))

    def landmarks(self, node=None) -> dict:
        node = node or self.node(LANDMARKS_NAME, "vtkMRMLMarkupsFiducialNode")
        if node is None:
            return {}
        return mrml.fiducials_to_dict(node, world=True)

    # ---- trajectory ------------------------------------------------------------------------------
    def suggest_target(self, side: str, segmentation_node=None) -> np.ndarray:
        """Target in world RAS for ``side`` ("left"/"right"): the planning module's suggestion on the
        last segmentation if available, else the centroid of the STN segment."""
        if self.segmentation_result is not None:
            try:
                from ..planning import suggest_target
                target_own = np.asarray(suggest_target(self.segmentation_result, side,
                                                        landmarks=self.landmarks() or None), float)
                node = segmentation_node or self.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
                world = mrml.world_from_node_matrix(node) if node is not None else np.eye(4)
                return world[:3, :3] @ target_own + world[:3, 3]
            except ImportError:
                pass
        node = segmentation_node or self.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
        if node is None:
            raise InputError("run the segmentation first (or place a target)", "Trajectory")
        seg_name = f"STN_{SIDES[side]}"
        seg = node.GetSegmentation()
        sid = seg.GetSegmentIdBySegmentName(seg_name)
        if not sid:
            raise InputError(f"no segment {seg_name}", node.GetName())
        rep = seg.GetSegment(sid).GetRepresentation(
            mrml.slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
        vm = mrml.vtk.vtkMatrix4x4()
        rep.GetImageToWorldMatrix(vm)
        arr = mrml._array_from_image(rep)
        value = seg.GetSegment(sid).GetLabelValue() if hasattr(seg.GetSegment(sid), "GetLabelValue") else 1
        ijk = np.argwhere(arr == value).astype(float)
        if not len(ijk):
            raise ProcessingError(f"segment {seg_name} is empty")
        ext = rep.GetExtent()
        ijk += [ext[0], ext[2], ext[4]]
        m = mrml.np_matrix(vm)
        own = ijk.mean(axis=0) @ m[:3, :3].T + m[:3, 3]
        world = mrml.world_from_node_matrix(node)
        return world[:3, :3] @ own + world[:3, 3]

    def plan_trajectory(self, side: str, target_ras=None, entry_ras=None, segmentation_node=None,
                        qsm_node=None) -> dict:
        """Target and entry (world RAS mm) -> fiducials (Targets/Entries, one point per side), the line
        ``Trajectory_<S>``, the electrode model ``Electrode_<S>`` (+ contacts, ``self.electrode`` placed
        with ``planning.place_electrode``). Missing target: suggested from the segmentation; missing entry:
        the textbook approach (60 deg above AC-PC, 20 deg lateral; ``planning.standard_trajectory``, at the
        brain surface when the QSM mask is known). Returns the nodes."""
        s = SIDES[side]
        target = np.asarray(target_ras if target_ras is not None else
                            self.suggest_target(side, segmentation_node), float)
        if entry_ras is None:
            entry_ras = self._standard_entry(target, side, qsm_node, segmentation_node)
        entry = np.asarray(entry_ras, float)
        targets = self._upsert_point(TARGETS_NAME, f"target_{s}", target, (0.95, 0.3, 0.1))
        entries = self._upsert_point(ENTRIES_NAME, f"entry_{s}", entry, (0.1, 0.8, 0.95))
        line = mrml.add_line(self.scene, entry, target, f"Trajectory_{s}")
        body, contacts, placement = self._electrode(side, target, entry, segmentation_node)
        model = mrml.add_model(self.scene, body, f"Electrode_{s}", color=(0.75, 0.75, 0.8))
        contacts_model = mrml.add_model(self.scene, contacts, f"Electrode_{s}_contacts", color=(0.95, 0.75, 0.2))
        return {"targets": targets, "entries": entries, "line": line, "electrode": model,
                "contacts": contacts_model, "target_ras": target, "entry_ras": entry, "placement": placement}

    def _standard_entry(self, target, side, qsm_node=None, segmentation_node=None):
        try:
            from ..planning import standard_trajectory
        except ImportError:
            return standard_entry(target, side)
        risk = None
        if qsm_node is not None:
            risk = self.risk_map(qsm_node, segmentation_node)
        return standard_trajectory(target, side, risk, self.landmarks() or None)

    def _electrode(self, side, target, entry, segmentation_node=None):
        """(body, contacts, placement) of ``self.electrode`` on the trajectory (planning's models; the
        generic 3389-like tube of ``electrode_polydata`` without the planning package)."""
        try:
            from ..planning import electrode_polydata as planning_polydata, place_electrode
        except ImportError:
            body, contacts = electrode_polydata(target, entry)
            return body, contacts, None
        seg, world = self.segmentation_result, None
        node = segmentation_node or self.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
        if seg is not None and node is not None:
            world = mrml.world_from_node_matrix(node)
        else:
            seg = None
        placement = place_electrode(self.electrode, target, entry, side, segmentation=seg,
                                    world_from_segmentation=world)
        body, contacts = planning_polydata(placement)
        return body, contacts, placement

    def _upsert_point(self, list_name: str, label: str, ras, color):
        node = self.node(list_name, "vtkMRMLMarkupsFiducialNode")
        if node is None:
            return mrml.add_fiducials(self.scene, {label: ras}, list_name, color=color)
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointLabel(i) == label:
                node.SetNthControlPointPositionWorld(i, *[float(v) for v in ras])
                return node
        idx = node.AddControlPointWorld(mrml.vtk.vtkVector3d(*[float(v) for v in ras]), label)
        node.SetNthControlPointLabel(idx, label)
        return node

    def trajectories(self) -> dict:
        """{side letter: (target_ras, entry_ras)} from the Targets/Entries fiducials (world RAS)."""
        t = self.node(TARGETS_NAME, "vtkMRMLMarkupsFiducialNode")
        e = self.node(ENTRIES_NAME, "vtkMRMLMarkupsFiducialNode")
        if t is None or e is None:
            return {}
        tp, ep = mrml.fiducials_to_dict(t, world=True), mrml.fiducials_to_dict(e, world=True)
        out = {}
        for s in SIDES.values():
            if f"target_{s}" in tp and f"entry_{s}" in ep:
                out[s] = (tp[f"target_{s}"], ep[f"entry_{s}"])
        return out

    # ---- risk along trajectories -----------------------------------------------------------------
    def vessel_mask(self, qsm: Volume, exclude_segmentation_node=None, brain_mask=None) -> np.ndarray:
        """Veins (bool, QSM grid) from ``planning.vessel_mask`` (χ, local contrast and tubularity), the
        segmented nuclei excluded (they are paramagnetic but not vessels)."""
        from ..planning import vessel_mask
        exclude = None
        if exclude_segmentation_node is not None:
            exclude = np.zeros(qsm.shape3, bool)
            for name in mrml.segment_names(exclude_segmentation_node):
                exclude |= mrml.segment_mask(exclude_segmentation_node, name, qsm)
        mask = vessel_mask(qsm, brain_mask, exclude=exclude)
        return np.asarray(getattr(mask, "data", mask)).astype(bool)

    def _qsm_brain_mask(self, qsm_node, qsm: Volume):
        mask_id = qsm_node.GetAttribute("QSMPlanner.MaskNodeID")
        node = self.scene.GetNodeByID(mask_id) if mask_id else None
        if node is not None:
            vol = mrml.volume_from_node(node)
            if vol.same_geometry(qsm):
                return vol.with_data(np.asarray(vol.data) > 0)
        return None

    def risk_map(self, qsm_node, segmentation_node=None, t1_node=None):
        """``planning.RiskMap`` (world = T1 RAS) with the veins of ``qsm_node`` (segmented nuclei excluded),
        its brain mask (entries at the brain surface) and, from the T1 (``t1_node``, default
        ``self.anatomy_node``), ventricles and sulci (``planning.csf_structures``). Cached until the QSM,
        the segmentation, the T1 or their transforms change."""
        from ..planning import RiskMap
        if qsm_node is None:
            raise InputError("select the QSM volume", "Trajectory")
        t1_node = t1_node if t1_node is not None else self.anatomy_node
        world = mrml.world_from_node_matrix(qsm_node)
        key = (qsm_node.GetID(), qsm_node.GetMTime(), None if segmentation_node is None else
               (segmentation_node.GetID(), segmentation_node.GetMTime()), world.round(6).tobytes(),
               self._t1_key(t1_node))
        if self._risk_cache[0] == key:
            return self._risk_cache[1]
        qsm = mrml.volume_from_node(qsm_node)
        brain = self._qsm_brain_mask(qsm_node, qsm)
        vessels = self.vessel_mask(qsm, segmentation_node, brain)
        layers = {"vessels": qsm.with_data(vessels.astype(np.uint8), name="vessels")}
        worlds = {"vessels": world}
        if brain is not None:
            layers["brain"] = brain.with_data(np.asarray(brain.data, np.uint8), name="brain")
            worlds["brain"] = world
            if t1_node is not None:
                try:
                    layers.update(self._csf_layers(t1_node, brain, world))
                    worlds["ventricles"] = worlds["sulci"] = mrml.world_from_node_matrix(t1_node)
                except Exception as exc:  # noqa: BLE001 — CSF is an aid; the plan says when it is missing
                    self._log(f"ventricles/sulci not mapped ({type(exc).__name__}: {exc})")
        risk = RiskMap.from_masks(**layers, world_from_volume=worlds)
        risk.vessels_volume = layers["vessels"]  # kept for the veins model
        self._risk_cache = (key, risk)
        return risk

    @staticmethod
    def _csf_layers(t1_node, brain: Volume, world_from_qsm) -> dict:
        """{"ventricles", "sulci"} masks on the T1 grid, from the T1 inside the QSM brain mask."""
        from ..planning import csf_structures
        from ..registration import resample
        t1 = mrml.volume_from_node(t1_node)
        t1_from_qsm = np.linalg.inv(mrml.world_from_node_matrix(t1_node)) @ world_from_qsm
        inside = resample(brain.with_data(np.asarray(brain.data, np.float32)), t1, t1_from_qsm,
                          interpolation="linear")
        ventricles, sulci = csf_structures(t1, inside.with_data((np.asarray(inside.data) > 0.5).astype(np.uint8)))
        return {"ventricles": ventricles, "sulci": sulci}

    def vessels_model(self, qsm_node, segmentation_node=None, name: str = "Veins"):
        """The veins the risk map uses, as a surface model (on the QSM grid, under the QSM's transform)."""
        vessels = self.risk_map(qsm_node, segmentation_node).vessels_volume
        poly = mrml.mask_surface(vessels, step=1, iterations=10)
        return mrml.add_model(self.scene, poly, name, color=(0.45, 0.25, 0.85), opacity=0.9,
                              parent_transform=qsm_node.GetParentTransformNode())

    def brain_model(self, qsm_node, name: str = "Brain"):
        """The QSM's brain mask as a faint surface model (3-D context), or None without a mask."""
        mask = self._qsm_brain_mask(qsm_node, mrml.volume_from_node(qsm_node))
        if mask is None:
            return None
        return mrml.add_model(self.scene, mrml.mask_surface(mask, step=2), name, color=(0.85, 0.8, 0.75),
                              opacity=0.08, slice_intersection=False,
                              parent_transform=qsm_node.GetParentTransformNode())

    def score(self, side: str, qsm_node, segmentation_node=None):
        """``planning.score_trajectory`` of the current ``side`` trajectory (world RAS)."""
        from ..planning import score_trajectory
        s = SIDES[side]
        traj = self.trajectories().get(s)
        if traj is None:
            raise InputError(f"no trajectory for the {side} side", "Trajectory")
        return score_trajectory(traj[0], traj[1], self.risk_map(qsm_node, segmentation_node), side,
                                self.margin_mm, landmarks=self.landmarks() or None, label="current")

    def distance_profile(self, side: str, qsm_node, segmentation_node=None, step_mm: float = 0.5):
        """Distance (mm) from the trajectory to the nearest vessel, every ``step_mm`` from target to entry:
        a table node ``Profile_<S>`` (depth_mm = distance above target, vessel_distance_mm = centre line to
        vessel, vessel_clearance_mm = instrument surfaces (lead + MER tracks) to vessel) and a plot chart
        ``Profile_<S> chart``. Returns (table node, chart node)."""
        s = SIDES[side]
        traj = self.trajectories().get(s)
        if traj is None:
            raise InputError(f"no trajectory for the {side} side", "Trajectory")
        target, entry = traj
        risk = self.risk_map(qsm_node, segmentation_node)
        length = float(np.linalg.norm(entry - target))
        depth = np.arange(0.0, length + 1e-9, step_mm)
        pts = target + np.outer(depth / length, entry - target)
        centre = risk.distance("vessels", pts, outside=np.nan)
        sc = self.score(side, qsm_node, segmentation_node)
        prof = sc.profile
        clearance = np.interp(depth, prof["depth_mm"], prof["vessels_clearance_mm"]) \
            if "vessels_clearance_mm" in prof else np.full(len(depth), np.nan)
        rows = [{"depth_mm": float(a), "vessel_distance_mm": float(b), "vessel_clearance_mm": float(c)}
                for a, b, c in zip(depth, centre, clearance)]
        table = mrml.add_table(self.scene, rows, f"Profile_{s}")
        table.SetAttribute("QSMPlanner.Safe", "yes" if sc.safe else "no")
        chart = None
        if hasattr(mrml.slicer, "vtkMRMLPlotSeriesNode"):
            chart = mrml._new_node(self.scene, "vtkMRMLPlotChartNode", f"Profile_{s} chart")
            for column, colour in (("vessel_distance_mm", (0.1, 0.4, 0.9)), ("vessel_clearance_mm", (0.9, 0.3, 0.1))):
                series = mrml._new_node(self.scene, "vtkMRMLPlotSeriesNode", f"Profile_{s} {column}")
                series.SetAndObserveTableNodeID(table.GetID())
                series.SetXColumnName("depth_mm")
                series.SetYColumnName(column)
                series.SetPlotType(series.PlotTypeScatter)
                series.SetColor(*colour)
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            chart.SetTitle(f"Trajectory {s}: distance to the nearest vessel")
            chart.SetXAxisTitle("depth above target (mm)")
            chart.SetYAxisTitle("distance (mm)")
        return table, chart

    def rank_entries(self, side: str, qsm_node, segmentation_node=None, target_ras=None,
                     margin_mm: float | None = None, n_best: int = 5):
        """``planning.search_entries`` around the target (frontal admissible region, entries at the brain
        surface, lead and MER tracks vs veins): a table node ``Suggestions_<S>`` (rank, entry R/A/S,
        elevation/lateral angles, length, vessel distance and clearance, safe, risk), the standard
        trajectory last (rank 0). The search is kept in ``self.searches[S]``."""
        from ..planning import search_entries
        s = SIDES[side]
        if margin_mm is not None:
            self.margin_mm = float(margin_mm)
        if target_ras is None:
            traj = self.trajectories().get(s)
            target_ras = traj[0] if traj is not None else self.suggest_target(side, segmentation_node)
        target = np.asarray(target_ras, float)
        risk = self.risk_map(qsm_node, segmentation_node)
        search = search_entries(target, side, risk, self.margin_mm, self.landmarks() or None, n_best=n_best)
        self.searches[s] = search
        rows = []
        scored = [(k, c) for k, c in enumerate(search.candidates, start=1)]
        if search.standard is not None:
            scored.append((0, search.standard))
        for rank, c in scored:
            rows.append({"rank": rank, "R": c.entry_ras[0], "A": c.entry_ras[1], "S": c.entry_ras[2],
                         "elevation_deg": c.elevation_deg, "lateral_deg": c.lateral_deg,
                         "length_mm": c.length_mm, "min_vessel_distance_mm": c.vessel_distance_mm,
                         "vessel_clearance_mm": c.vessel_clearance_mm,
                         "safe": "yes" if c.safe else "no", "risk": c.risk,
                         "label": c.label or ("standard" if rank == 0 else f"candidate {rank}")})
        table = mrml.add_table(self.scene, rows, f"Suggestions_{s}")
        statement = search.statement()
        safer = None if search.feasible else self.safer_target(side, target, risk, segmentation_node)
        if safer is not None:
            shift = float(np.linalg.norm(safer - target))
            statement += (f" A target {shift:.1f} mm away inside the STN (RAS {safer[0]:.1f}, {safer[1]:.1f},"
                          f" {safer[2]:.1f} mm) has a safe entry: move the target there to use it.")
            table.SetAttribute("QSMPlanner.SaferTargetRAS", ",".join(f"{v:.3f}" for v in safer))
        table.SetAttribute("QSMPlanner.Statement", statement)
        self._log(f"Entries {s}: {statement}")
        return table

    def safer_target(self, side: str, target, risk, segmentation_node=None, max_shift_mm: float = 2.5):
        """``planning.plan.safer_target`` on the last segmentation (world RAS), as ``run_patient`` moves
        its suggestion; None without a segmentation or when there is none."""
        from ..planning.plan import safer_target
        node = segmentation_node or self.node(NUCLEI_NAME, "vtkMRMLSegmentationNode")
        if self.segmentation_result is None or node is None:
            return None
        found = safer_target(self.segmentation_result, side, target, risk, mrml.world_from_node_matrix(node),
                             self.margin_mm, landmarks=self.landmarks() or None, max_shift_mm=max_shift_mm)
        return None if found is None else found[0]

    def probe_eye_slice(self, slice_node, side: str, depth_mm: float = 0.0):
        """Point ``slice_node`` perpendicular to the trajectory, ``depth_mm`` above the target (probe's-eye
        view): normal = entry - target, transverse = R projected off the normal."""
        s = SIDES[side]
        traj = self.trajectories().get(s)
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

    # ---- frame -----------------------------------------------------------------------------------
    def frame_task(self, ct_node) -> StageTask:
        """Leksell frame registration on the CT (own geometry): stores ``LeksellXYZ_from_CT`` (4x4, CT RAS
        mm -> frame XYZ mm) on the CT node and returns the FrameRegistration."""
        if ct_node is None:
            raise InputError("select the frame CT", "Frame")
        ct = mrml.volume_from_node(ct_node)

        def compute(progress):
            from ..stereotaxy import register_frame
            return register_frame(ct, progress=progress)

        def apply(frame):
            self.frame_result = frame
            ct_node.SetAttribute(FRAME_ATTRIBUTE, json.dumps(np.asarray(frame.xyz_from_ras).tolist()))
            ct_node.SetAttribute("QSMPlanner.FRE_mm", repr(float(frame.fre_mm)))
            return frame
        return StageTask("frame registration", compute, apply)

    def set_frame(self, ct_node, xyz_from_ct_ras):
        """Use a known frame pose (CT RAS -> Leksell XYZ mm) instead of registering the localizer."""
        ct_node.SetAttribute(FRAME_ATTRIBUTE, json.dumps(np.asarray(xyz_from_ct_ras, float).tolist()))

    def xyz_from_world(self, ct_node) -> np.ndarray | None:
        """World (T1) RAS -> Leksell XYZ, through the CT's frame pose and its transform to T1."""
        text = ct_node.GetAttribute(FRAME_ATTRIBUTE) if ct_node is not None else None
        if not text:
            return None
        xyz_from_ct = np.array(json.loads(text), float)
        return xyz_from_ct @ np.linalg.inv(mrml.world_from_node_matrix(ct_node))

    def coordinates_table(self, ct_node=None, mounting: str = "lateral-right", name: str = TABLE_NAME):
        """Table of every target/entry and landmark: world RAS (T1), AC-PC coordinates (if AC/PC/MS), and
        Leksell X, Y, Z with ring/arc for the mounting (if the frame is known). Returns the node."""
        xyz_from_world = self.xyz_from_world(ct_node)
        lm = self.landmarks()
        acpc = None
        if all(k in lm for k in ("AC", "PC", "MS")):
            try:
                from ..stereotaxy import acpc_coordinates
                acpc = lambda p: np.asarray(acpc_coordinates(p, lm["AC"], lm["PC"], lm["MS"]), float)  # noqa
            except ImportError:
                acpc = None
        rows = []
        points = [(k, v) for k, v in lm.items()]
        for s, (target, entry) in self.trajectories().items():
            points += [(f"target_{s}", target), (f"entry_{s}", entry)]
        ring_arcs = {}
        if xyz_from_world is not None:
            try:
                from ..stereotaxy import ring_arc
                for s, (target, entry) in self.trajectories().items():
                    t_xyz = xyz_from_world[:3, :3] @ target + xyz_from_world[:3, 3]
                    e_xyz = xyz_from_world[:3, :3] @ entry + xyz_from_world[:3, 3]
                    ring_arcs[f"target_{s}"] = ring_arc(t_xyz, e_xyz, mounting)
            except ImportError:
                pass
        for label, p in points:
            p = np.asarray(p, float)
            row = {"point": label, "R": p[0], "A": p[1], "S": p[2]}
            if acpc is not None:
                c = acpc(p)
                row.update({"ACPC_lat": c[0], "ACPC_ap": c[1], "ACPC_vert": c[2]})
            if xyz_from_world is not None:
                x = xyz_from_world[:3, :3] @ p + xyz_from_world[:3, 3]
                row.update({"X": x[0], "Y": x[1], "Z": x[2]})
                if label in ring_arcs:
                    ring, arc = _ring_arc_values(ring_arcs[label])
                    row.update({"ring_deg": ring, "arc_deg": arc, "mounting": mounting})
                    frame = self.frame_result
                    if frame is not None and hasattr(frame, "predicted_tre_mm") and ct_node is not None \
                            and ct_node.GetAttribute("QSMPlanner.FRE_mm"):
                        row["predicted_TRE_mm"] = float(frame.predicted_tre_mm(target_xyz=x))
            rows.append(row)
        node = mrml.add_table(self.scene, rows, name)
        node.SetAttribute("QSMPlanner.CoordinateSystems",
                          "R,A,S: T1 RAS mm; X,Y,Z: Leksell frame mm; ACPC_*: mm from the mid-commissural point")
        return node

    # ---- export ----------------------------------------------------------------------------------
    def save_scene(self, path):
        return mrml.save_mrb(self.scene, path)
