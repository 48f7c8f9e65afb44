"""Workflow results as MRML nodes: the one way QSMPlanner shows its data in Slicer. The panel calls these as
each stage finishes; ``plan_scene`` calls the same functions for the command line's scene.mrb, so a saved
command-line plan opens in Slicer exactly as the panel builds it.

World = the planning T1's RAS (mm). The GRE echoes, QSM and nuclei keep the GRE grid under the transform
node ``T1_from_GRE``; the CT sits under ``T1_from_CT``. Frame coordinates are never RAS: they appear in
tables; the frame pose is the CT node's attribute ``FRAME_ATTRIBUTE`` (CT RAS -> frame coordinates).
"""
from __future__ import annotations

import json

import numpy as np

from ..progress import run_to_end
from ..volume import Volume
from . import mrml

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
VEINS_NAME = "Veins"
FRAME_ATTRIBUTE = "QSMPlanner.FrameFromCT"           # CT RAS -> the frame's native coordinates, 4x4
FRAME_SYSTEM_ATTRIBUTE = "QSMPlanner.FrameSystem"    # "leksell", "crw" or "brw"
FRAME_OF_ATTRIBUTE = "QSMPlanner.FrameOf"            # on the frame's nodes: the CT node they belong to
SIDE_LETTERS = {"left": "L", "right": "R"}


def show_gre(scene, gre, series: str = GRE_SERIES, parent_transform=None) -> dict:
    """One scalar volume per echo and part (``<series>_magnitude_echoN``, ``<series>_phase_echoN``), each
    tagged with its echo index, TE (s), field (T) and B0 direction in the voxel frame, so that
    ``panel`` can put the acquisition back together."""
    steps = show_gre_steps(scene, gre, series, parent_transform)
    return run_to_end(steps)


def show_gre_steps(scene, gre, series: str = GRE_SERIES, parent_transform=None):
    """``show_gre`` one echo node at a time (a generator that yields after each node; its value is the
    nodes)."""
    nodes = {"magnitude": [], "phase": []}
    for part, arr in (("magnitude", gre.magnitude), ("phase", gre.phase_rad)):
        for e in range(gre.n_echoes):
            vol = Volume(np.asarray(arr[..., e], np.float32), gre.ras_from_ijk, "")
            node = mrml.add_volume(scene, vol, f"{series}_{part}_echo{e + 1}", parent_transform=parent_transform)
            node.SetAttribute("QSMPlanner.GRESeries", series)
            node.SetAttribute("QSMPlanner.Part", part)
            node.SetAttribute("QSMPlanner.EchoIndex", str(e))
            node.SetAttribute("QSMPlanner.EchoTime_s", repr(float(gre.te_s[e])))
            node.SetAttribute("QSMPlanner.B0_T", repr(float(gre.b0_tesla)))
            node.SetAttribute("QSMPlanner.B0DirIJK", json.dumps([float(v) for v in gre.b0_dir_ijk]))
            nodes[part].append(node)
            yield
    return nodes


def show_qsm(scene, qsm_result, parent_transform=None, name: str = QSM_NAME, method: str = ""):
    """The χ map (QSM display) and its brain mask (a labelmap the QSM node points at)."""
    steps = show_qsm_steps(scene, qsm_result, parent_transform, name, method)
    return run_to_end(steps)


def show_qsm_steps(scene, qsm_result, parent_transform=None, name: str = QSM_NAME, method: str = ""):
    """``show_qsm`` a node at a time (a generator; its value is the QSM node)."""
    node = mrml.add_volume(scene, qsm_result.chi_ppm, name, kind="qsm", parent_transform=parent_transform)
    if method:
        node.SetAttribute("QSMPlanner.Method", method)
    mask = getattr(qsm_result, "mask", None)
    if isinstance(mask, Volume):
        yield
        mask_node = mrml.add_volume(scene, mask.with_data(np.asarray(mask.data, np.uint8)), f"{name} mask",
                                    kind="labelmap", parent_transform=parent_transform)
        mask_node.GetDisplayNode().SetVisibility(False)
        node.SetAttribute("QSMPlanner.MaskNodeID", mask_node.GetID())
    return node


def brain_mask_of(qsm_node) -> Volume | None:
    """The QSM's brain mask (bool, QSM grid), or None."""
    mask_id = qsm_node.GetAttribute("QSMPlanner.MaskNodeID")
    node = qsm_node.GetScene().GetNodeByID(mask_id) if mask_id else None
    if node is None:
        return None
    vol = mrml.volume_from_node(node)
    return vol.with_data(np.asarray(vol.data) > 0)


def show_segmentation(scene, labelmap: Volume, names: dict, name: str = NUCLEI_NAME, reference_node=None,
                      parent_transform=None):
    """The nuclei as a segmentation node, one named segment per label value."""
    return mrml.add_segmentation(scene, labelmap, names, name, reference_volume_node=reference_node,
                                 parent_transform=parent_transform)


def show_landmarks(scene, points: dict, name: str = LANDMARKS_NAME):
    """AC, PC, MS (world RAS mm) as a point list."""
    ordered = {k: points[k] for k in ("AC", "PC", "MS") if k in points}
    return mrml.add_fiducials(scene, ordered, name, color=(1.0, 0.85, 0.1))


def upsert_point(scene, list_name: str, label: str, ras, color):
    """Set (or add) the control point ``label`` of the point list ``list_name`` to ``ras`` (world)."""
    node = mrml.node_by_name(scene, list_name, "vtkMRMLMarkupsFiducialNode")
    if node is None:
        return mrml.add_fiducials(scene, {label: ras}, list_name, color=color)
    mrml.set_control_point(node, label, ras)
    return node


def show_trajectory(scene, side: str, target_ras, entry_ras, placement=None) -> dict:
    """Target and entry points (lists ``Targets`` / ``Entries``), the line ``Trajectory_<S>`` and, with an
    ``ElectrodePlacement``, the lead ``Electrode_<S>`` and its contacts."""
    from ..planning import electrode_polydata
    s = SIDE_LETTERS[side]
    nodes = {"targets": upsert_point(scene, TARGETS_NAME, f"target_{s}", target_ras, (0.95, 0.3, 0.1)),
             "entries": upsert_point(scene, ENTRIES_NAME, f"entry_{s}", entry_ras, (0.1, 0.8, 0.95)),
             "line": mrml.add_line(scene, entry_ras, target_ras, f"Trajectory_{s}")}
    if placement is not None:
        body, contacts = electrode_polydata(placement)
        nodes["electrode"] = mrml.add_model(scene, body, f"Electrode_{s}", color=(0.75, 0.75, 0.8))
        nodes["contacts"] = mrml.add_model(scene, contacts, f"Electrode_{s}_contacts", color=(0.95, 0.75, 0.2))
    return nodes


def show_side_plan(scene, side_plan) -> dict:
    """A ``SidePlan``: trajectory and electrode (``show_trajectory``) and the ranked entries table."""
    nodes = show_trajectory(scene, side_plan.side, side_plan.target_ras, side_plan.chosen.entry_ras,
                            side_plan.placement)
    nodes["suggestions"] = show_suggestions(scene, side_plan.side, side_plan.search, side_plan.plan)
    return nodes


def show_suggestions(scene, side: str, search, plan: dict | None = None):
    """Table ``Suggestions_<S>``: rank, entry R/A/S (world RAS mm), angles, length, vessel distance and
    clearance, safe, risk; the standard trajectory last (rank 0). The statement rides on the table."""
    rows = []
    scored = list(enumerate(search.candidates, start=1))
    if search.standard is not None:
        scored.append((0, search.standard))
    for rank, c in scored:
        rows.append({"rank": rank, "R": c.entry_ras[0], "A": c.entry_ras[1], "S": c.entry_ras[2],
                     "elevation_deg": c.elevation_deg, "lateral_deg": c.lateral_deg, "length_mm": c.length_mm,
                     "min_vessel_distance_mm": c.vessel_distance_mm, "vessel_clearance_mm": c.vessel_clearance_mm,
                     "safe": "yes" if c.safe else "no", "risk": c.risk,
                     "label": "standard" if rank == 0 else f"candidate {rank}"})
    table = mrml.add_table(scene, rows, f"Suggestions_{SIDE_LETTERS[side]}")
    statement = (plan or {}).get("statement") or search.statement()
    table.SetAttribute("QSMPlanner.Statement", statement)
    return table


def show_coordinates(scene, document: dict, name: str = TABLE_NAME):
    """The plan document's coordinate table (landmarks, then target and entry per side)."""
    from ..report import coordinate_table
    rows = coordinate_table(document, landmarks=True)
    node = mrml.add_table(scene, rows, name)
    node.SetAttribute("QSMPlanner.CoordinateSystems", "; ".join(f"{k}: {v}" for k, v in
                                                                 document.get("coordinate_systems", {}).items()))
    return node


def set_frame_pose(ct_node, xyz_from_ct_ras, fre_mm: float | None = None, system: str = "leksell"):
    """Store the frame pose (CT RAS -> the native coordinates of ``system``, 4x4) on the CT node."""
    ct_node.SetAttribute(FRAME_ATTRIBUTE, json.dumps(np.asarray(xyz_from_ct_ras, float).tolist()))
    ct_node.SetAttribute(FRAME_SYSTEM_ATTRIBUTE, system)
    if fre_mm is not None:
        ct_node.SetAttribute("QSMPlanner.FRE_mm", repr(float(fre_mm)))


def frame_pose(ct_node) -> np.ndarray | None:
    text = ct_node.GetAttribute(FRAME_ATTRIBUTE) if ct_node is not None else None
    return None if not text else np.array(json.loads(text), float)


def frame_system_of(ct_node) -> str:
    return (ct_node.GetAttribute(FRAME_SYSTEM_ATTRIBUTE) if ct_node is not None else None) or "leksell"


def show_frame(scene, frame, ct_node) -> dict:
    """The registered frame on the CT: the transform node ``<System> frame`` (frame RAS -> CT RAS, under the
    CT's own transform) with the localizer's rods as a model beneath it (where the frame says the rods are:
    they must sit on the CT's rods), and the rods' fitted end points and Brown fiducials (with their
    residuals) as the point list ``Localizer fiducials`` in CT RAS. Returns the nodes."""
    import vtk
    system = frame.frame_system
    parent = ct_node.GetParentTransformNode()
    transform = mrml.add_transform(scene, frame.image_from_frame, f"{system.name} frame", parent_transform=parent)
    rods = vtk.vtkAppendPolyData()
    for plate in system.plates.values():
        for start, end in plate.rods():
            line = vtk.vtkLineSource()
            line.SetPoint1(*start)
            line.SetPoint2(*end)
            tube = vtk.vtkTubeFilter()
            tube.SetInputConnection(line.GetOutputPort())
            tube.SetRadius(1.0)
            tube.SetNumberOfSides(12)
            tube.Update()
            rods.AddInputData(tube.GetOutput())
    rods.Update()
    poly = vtk.vtkPolyData()
    poly.DeepCopy(rods.GetOutput())
    model = mrml.add_model(scene, poly, f"{system.name} localizer (model)", color=(0.2, 0.9, 0.9), opacity=0.5,
                           parent_transform=transform)
    fiducials = mrml.add_fiducials(scene, frame.fiducial_markups(), "Localizer fiducials", color=(0.9, 0.9, 0.2),
                                   locked=True, parent_transform=parent)
    for node in (transform, model, fiducials):
        node.SetAttribute(FRAME_OF_ATTRIBUTE, ct_node.GetID())
    return {"transform": transform, "model": model, "fiducials": fiducials}


def plan_scene(result, scene=None):
    """A scene of a ``workflow.PatientPlan``, built with the functions the panel uses: T1, CT (under
    ``T1_from_CT``), QSM and nuclei (under ``T1_from_GRE``), veins, landmarks, both trajectories with their
    electrodes and ranked entries, and the coordinate table."""
    scene = scene if scene is not None else mrml.new_scene()
    t_gre = mrml.add_transform(scene, result.t1_from_gre, T1_FROM_GRE)
    mrml.add_volume(scene, result.t1, T1_NAME)
    if result.ct is not None:
        t_ct = mrml.add_transform(scene, result.t1_from_ct, T1_FROM_CT) if result.t1_from_ct is not None else None
        ct_node = mrml.add_volume(scene, result.ct, CT_NAME, window=(-100.0, 1500.0), parent_transform=t_ct)
        if result.xyz_from_t1 is not None and result.t1_from_ct is not None:
            system = result.frame_system
            set_frame_pose(ct_node, np.asarray(result.xyz_from_t1) @ np.asarray(result.t1_from_ct),
                           None if result.frame is None else result.frame.fre_mm, system)
        if result.frame is not None:
            show_frame(scene, result.frame, ct_node)
    qsm_node = show_qsm(scene, result.qsm, t_gre)
    seg = result.segmentation
    show_segmentation(scene, seg.labelmap, seg.names, reference_node=qsm_node, parent_transform=t_gre)
    mrml.add_volume(scene, result.vessels.with_data(np.asarray(result.vessels.data, np.uint8)), VEINS_NAME,
                    kind="labelmap", parent_transform=t_gre)
    show_landmarks(scene, result.landmarks)
    for side_plan in result.sides.values():
        show_side_plan(scene, side_plan)
    show_coordinates(scene, result.document)
    return scene
