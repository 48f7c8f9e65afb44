"""QSMPlanner results as MRML nodes, and MRML scenes saved as / read from Slicer bundles (.mrb).

With ``render.py`` the only modules of QSMPlannerLib that import ``slicer``. They work inside 3D Slicer (on
``slicer.mrmlScene``) and headless on the PyPI ``slicer-core`` wheel (real MRML, no application):
``new_scene()`` wires the module logics that a headless scene needs.

Geometry: every matrix is RAS mm, as in Slicer. A volume node's IJK->RAS matrix is ``Volume.ras_from_ijk``
(oblique included). A transform node stores its matrix "to parent" (``parent_from_child``, RAS->RAS);
nodes placed under it are observed, not hardened, unless ``harden=True``.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path

import numpy as np

import slicer
import vtk
from vtkmodules.util import numpy_support

from ..errors import InputError, ProcessingError
from ..progress import run_to_end
from ..volume import Volume

# The scene file header (<MRML version="...">) that Slicer itself writes: vtkMRMLScene's constructor sets
# "<application> <major>.<minor>.<patch> <revision>" from MRML_APPLICATION_NAME/VERSION/REVISION
# (Libs/MRML/Core/vtkMRMLScene.cxx); slicer-core says "slicer-core 4.0.0 0". On loading, Slicer warns when
# the application differs ("The scene file was saved with ... application", qSlicerSceneReader) or the version
# is newer than its own, so the oldest Slicer QSMPlanner supports is named: 5.8.1, revision 33241.
SLICER_SCENE_VERSION = "Slicer 5.8.1 33241"

# Display defaults: QSM in grey, window -0.15..0.25 ppm (deep nuclei bright, veins brightest).
QSM_WINDOW_PPM = (-0.15, 0.25)

# Colours (RGB 0..1) of the segments QSMPlanner produces, by name prefix.
SEGMENT_COLORS = {
    "STN": (0.95, 0.55, 0.10),   # orange
    "SN": (0.25, 0.55, 0.95),    # blue
    "RN": (0.90, 0.15, 0.20),    # red
    "GPi": (0.30, 0.80, 0.30),
    "GPe": (0.55, 0.85, 0.45),
    "Pu": (0.75, 0.60, 0.90),
    "Ca": (0.60, 0.45, 0.85),
    "Thal": (0.95, 0.85, 0.40),
    "CSF": (0.55, 0.80, 0.95),
    "vein": (0.20, 0.30, 0.85),
    "sinus": (0.15, 0.20, 0.70),
}

# Logics kept alive for scenes made by new_scene(), keyed by id(scene) with a weak reference to it.
_LOGIC_HOLDER: dict = {}


# --------------------------------------------------------------------------------------------------
# matrices and arrays
# --------------------------------------------------------------------------------------------------
def vtk_matrix(m) -> vtk.vtkMatrix4x4:
    """numpy 4x4 -> vtkMatrix4x4."""
    m = np.asarray(m, dtype=float).reshape(4, 4)
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def np_matrix(vm: vtk.vtkMatrix4x4) -> np.ndarray:
    """vtkMatrix4x4 -> numpy 4x4."""
    return np.array([[vm.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _image_from_array(data: np.ndarray, first_index=(0, 0, 0)) -> vtk.vtkImageData:
    """numpy [i, j, k] -> vtkImageData (x fastest), unit spacing, zero origin (geometry lives on the node);
    ``first_index``: the voxel index of ``data[0, 0, 0]`` (the image's extent starts there)."""
    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype == np.float16:
        data = data.astype(np.float32)
    img = vtk.vtkImageData()
    lo = [int(v) for v in first_index]
    img.SetExtent(lo[0], lo[0] + data.shape[0] - 1, lo[1], lo[1] + data.shape[1] - 1,
                  lo[2], lo[2] + data.shape[2] - 1)
    flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel()
    scalars = numpy_support.numpy_to_vtk(flat, deep=True)
    scalars.SetName("ImageScalars")
    img.GetPointData().SetScalars(scalars)
    return img


def _array_from_image(img, copy: bool = True) -> np.ndarray:
    """vtkImageData -> numpy [i, j, k]: a copy, or (``copy=False``) a read-only view of the image's memory."""
    dims = img.GetDimensions()
    flat = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars())
    view = flat.reshape(dims[2], dims[1], dims[0]).transpose(2, 1, 0)
    if copy:
        return view.copy()
    view.flags.writeable = False
    return view


# --------------------------------------------------------------------------------------------------
# scene
# --------------------------------------------------------------------------------------------------
class _Logics:
    """The module logics a headless scene needs (colours, segmentations, markups, volumes, MRB reading)."""

    def __init__(self, scene):
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(scene)
        self.app.SetSliceLogics(vtk.vtkCollection())
        self.app.SetViewLogics(vtk.vtkCollection())
        self.colors = self.app.GetColorLogic()
        self.colors.SetMRMLScene(scene)
        self.colors.AddDefaultColorNodes()
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(scene)
        self.segmentations.SetMRMLApplicationLogic(self.app)
        self.app.SetModuleLogic("Segmentations", self.segmentations)
        self.markups = slicer.vtkSlicerMarkupsLogic()
        self.markups.SetMRMLScene(scene)
        self.markups.SetMRMLApplicationLogic(self.app)
        self.app.SetModuleLogic("Markups", self.markups)
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.volumes.SetMRMLScene(scene)
        self.volumes.SetMRMLApplicationLogic(self.app)
        self.app.SetModuleLogic("Volumes", self.volumes)
        self.transforms = slicer.vtkSlicerTransformLogic()
        self.cache_dir = tempfile.mkdtemp(prefix="qsmplanner-mrml-cache-")
        self.remote_io = slicer.vtkMRMLRemoteIOLogic()
        self.remote_io.SetMRMLScene(scene)
        self.remote_io.SetMRMLApplicationLogic(self.app)
        self.remote_io.GetCacheManager().SetRemoteCacheDirectory(self.cache_dir)
        self.data_io = slicer.vtkDataIOManagerLogic()
        self.data_io.SetMRMLScene(scene)
        self.data_io.SetMRMLApplicationLogic(self.app)
        self.data_io.SetAndObserveDataIOManager(self.remote_io.GetDataIOManager())
        self.remote_io.AddDataIOToScene()

    def __del__(self):
        shutil.rmtree(getattr(self, "cache_dir", ""), ignore_errors=True)


def in_slicer_application() -> bool:
    """True inside the 3D Slicer application (``slicer.app`` exists), False on the slicer-core wheel."""
    return hasattr(slicer, "app") and hasattr(slicer, "modules")


def new_scene():
    """A fresh vtkMRMLScene with the logics wired for colours, segmentations, markups and .mrb reading.

    Also sets ``slicer.mrmlScene`` when running headless (``slicer.util`` functions look it up there).
    """
    scene = slicer.vtkMRMLScene()
    logics = _Logics(scene)
    _LOGIC_HOLDER[id(scene)] = (weakref.ref(scene), logics)
    _prune_logics()
    if not in_slicer_application():
        slicer.mrmlScene = scene
    return scene


def scene_logics(scene) -> _Logics | None:
    entry = _LOGIC_HOLDER.get(id(scene))
    if entry is not None and entry[0]() is scene:
        return entry[1]
    return None


def _prune_logics():
    for key in [k for k, (ref, _) in _LOGIC_HOLDER.items() if ref() is None]:
        del _LOGIC_HOLDER[key]


def nodes_by_class(scene, class_name: str) -> list:
    """All nodes of ``class_name`` (subclasses included), in scene order."""
    col = scene.GetNodesByClass(class_name)
    return [col.GetItemAsObject(i) for i in range(col.GetNumberOfItems())]


def node_by_name(scene, name: str, class_name: str = "vtkMRMLNode"):
    """The first node of ``class_name`` called ``name``, or None."""
    for n in nodes_by_class(scene, class_name):
        if n.GetName() == name:
            return n
    return None


def _new_node(scene, class_name: str, name: str, replace: bool = True):
    if replace:
        old = node_by_name(scene, name, class_name)
        if old is not None:
            scene.RemoveNode(old)
    node = scene.AddNewNodeByClass(class_name, name)
    return node


# --------------------------------------------------------------------------------------------------
# volumes
# --------------------------------------------------------------------------------------------------
def add_volume(scene, vol: Volume, name: str | None = None, *, kind: str = "scalar",
               window: tuple | None = None, color_node_id: str | None = None, parent_transform=None,
               replace: bool = True):
    """Add ``vol`` as a volume node whose IJK->RAS matrix is ``vol.ras_from_ijk`` (oblique included).

    kind: "scalar" (grey, auto window), "qsm" (grey, window ``QSM_WINDOW_PPM`` ppm unless ``window``
    (low, high) is given) or "labelmap" (integer labels, generic anatomy colours).
    """
    data = np.asarray(vol.data)
    if data.ndim != 3:
        raise InputError(f"add_volume expects a 3-D volume, got shape {data.shape}", name or vol.name)
    name = name or vol.name or "volume"
    if kind == "labelmap":
        data = data.astype(np.int32 if data.max(initial=0) > 32767 else np.int16)
        node = _new_node(scene, "vtkMRMLLabelMapVolumeNode", name, replace)
    else:
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        if kind == "scalar" and _int16_exact(data):
            data = data.astype(np.int16)  # as Slicer holds a CT or MR series; halves the bundle
        node = _new_node(scene, "vtkMRMLScalarVolumeNode", name, replace)
    node.SetIJKToRASMatrix(vtk_matrix(vol.ras_from_ijk))
    # the display node before the voxels: with its window set, it does not scan the whole image
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if kind == "labelmap":
        display.SetAndObserveColorNodeID(color_node_id or "vtkMRMLColorTableNodeLabels")
    else:
        display.SetAndObserveColorNodeID(color_node_id or "vtkMRMLColorTableNodeGrey")
        if kind == "qsm" or window is not None:
            low, high = window if window is not None else QSM_WINDOW_PPM
            display.AutoWindowLevelOff()
            display.SetWindowLevelMinMax(float(low), float(high))
        else:
            sample = data.ravel(order="K")[:: max(1, data.size // 500_000)]   # the window from ~0.5 M voxels
            finite = sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample
            if finite.size:
                low, high = np.percentile(finite, [1.0, 99.5])
                if high > low:
                    display.AutoWindowLevelOff()
                    display.SetWindowLevelMinMax(float(low), float(high))
    node.SetAndObserveImageData(_image_from_array(data))
    if kind == "qsm":
        node.SetAttribute("QSMPlanner.Quantity", "susceptibility_ppm")
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


def _int16_exact(data: np.ndarray) -> bool:
    """True for floating data of whole numbers within int16 (scanner intensities, CT HU): int16 is exact."""
    if not np.issubdtype(data.dtype, np.floating) or data.size == 0:
        return False
    sample = data.ravel(order="K")[:: max(1, data.size // 100_000)]   # fractional data is told apart in ~1 ms
    if not np.array_equal(sample, np.round(sample)):
        return False
    low, high = np.nanmin(data), np.nanmax(data)
    return bool(np.isfinite(low) and np.isfinite(high) and -32768 <= low and high <= 32767
                and np.array_equal(data, np.round(data)))


def volume_from_node(node, world: bool = False, copy: bool = True) -> Volume:
    """A ``Volume`` from a volume node. ``world=True`` folds a linear parent transform into the matrix
    (RAS of the scene's world), else the node's own IJK->RAS. ``copy=False``: the voxels are a read-only
    view of the node's memory (no copy; for handing to a stage that only reads them)."""
    vm = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    ras_from_ijk = np_matrix(vm)
    if world and node.GetParentTransformNode() is not None:
        ras_from_ijk = world_from_node_matrix(node) @ ras_from_ijk
    img = node.GetImageData()
    if img is None:
        raise InputError("volume node has no image data", node.GetName())
    return Volume(_array_from_image(img, copy), ras_from_ijk, node.GetName())


def ras_from_ijk_of(node) -> np.ndarray:
    vm = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vm)
    return np_matrix(vm)


# --------------------------------------------------------------------------------------------------
# segmentations
# --------------------------------------------------------------------------------------------------
def _segment_color(name: str):
    for prefix, rgb in SEGMENT_COLORS.items():
        if name.startswith(prefix):
            return rgb
    rng = np.random.default_rng(abs(hash(name)) % (2 ** 32))
    return tuple(float(c) for c in rng.uniform(0.3, 1.0, 3))


def _terminology_entry(name: str, value: int) -> str:
    """Slicer terminology string: category "Anatomical structure" (SCT 123037004), the type coded in the
    CIT168 label scheme (value = label), side as modifier."""
    side = ""
    if name.endswith("_L"):
        side = "SCT^7771000^Left"
    elif name.endswith("_R"):
        side = "SCT^24028007^Right"
    base = name[:-2] if side else name
    return ("Segmentation category and type - 3D Slicer General Anatomy list"
            f"~SCT^123037004^Anatomical Structure~CIT168^{int(value)}^{base}~{side}"
            "~Anatomic codes - DICOM master list~^^~^^")


def add_segmentation(scene, labelmap: Volume, names: dict, name: str = "Segmentation", *,
                     colors: dict | None = None, reference_volume_node=None, closed_surface: bool = False,
                     parent_transform=None, replace: bool = True):
    """Labelmap (integer values, geometry ``labelmap.ras_from_ijk``) -> segmentation node, one named
    segment per value in ``names`` ({value: name}). Segment IDs are the names; each segment carries
    its label value (tag ``QSMPlanner.LabelValue``), a colour and a terminology entry.
    Values present in the labelmap but absent from ``names`` are ignored; names absent from the
    labelmap give an empty segment (so the segment list is always the same)."""
    steps = add_segmentation_steps(scene, labelmap, names, name, colors=colors,
                                   reference_volume_node=reference_volume_node, closed_surface=closed_surface,
                                   parent_transform=parent_transform, replace=replace)
    return run_to_end(steps)


def add_segmentation_steps(scene, labelmap: Volume, names: dict, name: str = "Segmentation", *,
                     colors: dict | None = None, reference_volume_node=None, closed_surface: bool = False,
                     parent_transform=None, replace: bool = True):
    """``add_segmentation`` a segment at a time (a generator; its value is the node).

    Labelmap (integer values, geometry ``labelmap.ras_from_ijk``) -> segmentation node, one named
    segment per value in ``names`` ({value: name}). Segment IDs are the names; each segment carries
    its label value (tag ``QSMPlanner.LabelValue``), a colour and a terminology entry.
    Values present in the labelmap but absent from ``names`` are ignored; names absent from the
    labelmap give an empty segment (so the segment list is always the same)."""
    data = np.asarray(labelmap.data)
    node = _new_node(scene, "vtkMRMLSegmentationNode", name, replace)
    node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    from scipy import ndimage
    ijk_to_ras = vtk_matrix(labelmap.ras_from_ijk)
    segmentation = node.GetSegmentation()
    labels = data.astype(np.int32) if data.dtype.kind in "iub" else np.rint(data).astype(np.int32)
    boxes = {}
    if labels.size and labels.max(initial=0) > 0:
        found = ndimage.find_objects(np.where(labels > 0, labels, 0))
        boxes = {v: box for v, box in enumerate(found, start=1) if box is not None}
    for value, seg_name in sorted(names.items()):
        value = int(value)
        box = boxes.get(value)
        if box is not None:   # each segment's labelmap covers its own box, as Slicer keeps them
            mask, first = (labels[box] == value).astype(np.uint8), [b.start for b in box]
        else:
            mask, first = np.zeros((1, 1, 1), np.uint8), [0, 0, 0]
        oriented = slicer.vtkOrientedImageData()
        oriented.ShallowCopy(_image_from_array(mask, first))
        oriented.SetImageToWorldMatrix(ijk_to_ras)
        rgb = (colors or {}).get(value) or _segment_color(seg_name)
        segment = slicer.vtkSegment()
        segment.SetName(seg_name)
        segment.SetColor(*[float(c) for c in rgb[:3]])
        segment.AddRepresentation(
            slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName(), oriented)
        segment.SetTag("QSMPlanner.LabelValue", str(value))
        segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), _terminology_entry(seg_name, value))
        segmentation.AddSegment(segment, seg_name)
        yield
    if closed_surface:
        node.CreateClosedSurfaceRepresentation()
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


def segment_names(node) -> list[str]:
    seg = node.GetSegmentation()
    return [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]


def segment_mask(node, segment_name: str, reference: Volume) -> np.ndarray:
    """Binary mask (bool, on ``reference``'s grid) of one segment, resampled by nearest neighbour."""
    seg = node.GetSegmentation()
    segment_id = seg.GetSegmentIdBySegmentName(segment_name)
    if not segment_id:
        raise InputError(f"no segment named {segment_name!r}", node.GetName())
    rep_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    segment = seg.GetSegment(segment_id)
    oriented = segment.GetRepresentation(rep_name)
    # Segments may share one labelmap layer, each with its own value in it.
    value = segment.GetLabelValue() if hasattr(segment, "GetLabelValue") else 1
    src = _array_from_image(oriented)
    out = np.zeros(reference.shape3, bool)
    if not src.size:
        return out
    vm = vtk.vtkMatrix4x4()
    oriented.GetImageToWorldMatrix(vm)
    extent = oriented.GetExtent()
    # source array index (extent may not start at 0) from reference voxel index
    src_from_ref = np.linalg.inv(np_matrix(vm)) @ reference.ras_from_ijk
    src_from_ref[:3, 3] -= [extent[0], extent[2], extent[4]]
    snapped = np.round(src_from_ref)
    src_from_ref = np.where(np.abs(src_from_ref - snapped) < 1e-6, snapped, src_from_ref)
    if np.array_equal(src_from_ref[:3, :3], np.eye(3)) and np.array_equal(src_from_ref[:3, 3], snapped[:3, 3]):
        # the same grid up to a whole-voxel shift (a segment made on this volume): copy the overlap
        shift = src_from_ref[:3, 3].astype(int)
        dst = tuple(slice(max(0, -o), min(n, m - o)) for o, n, m in zip(shift, reference.shape3, src.shape))
        if all(d.start < d.stop for d in dst):
            srcs = tuple(slice(d.start + o, d.stop + o) for d, o in zip(dst, shift))
            out[dst] = src[srcs] == value
        return out
    from scipy import ndimage
    # one voxel of zero padding so that voxel centres on the border are not lost to rounding
    binary = np.pad((src == value).astype(np.uint8), 1)
    out = ndimage.affine_transform(binary, src_from_ref[:3, :3], offset=src_from_ref[:3, 3] + 1.0,
                                   output_shape=reference.shape3, order=0, mode="constant", cval=0) > 0
    return out


def labelmap_from_segmentation(node, reference: Volume, values: dict, name: str = "") -> Volume:
    """The segments named in ``values`` ({segment name: label value}) as one label map on ``reference``'s
    grid (in the segmentation's own coordinates; later segments win where they overlap). Segments
    missing from the node are left out."""
    out = np.zeros(reference.shape3, np.int16)
    present = set(segment_names(node))
    for seg_name, value in values.items():
        if seg_name in present:
            out[segment_mask(node, seg_name, reference)] = int(value)
    return Volume(out, reference.ras_from_ijk.copy(), name or node.GetName())


def segments_state(node) -> tuple:
    """What the segments' voxels depend on: each segment's name and its labelmap's modification time (an
    edit in the Segment Editor changes it)."""
    seg = node.GetSegmentation()
    rep_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    out = []
    for i in range(seg.GetNumberOfSegments()):
        segment = seg.GetNthSegment(i)
        rep = segment.GetRepresentation(rep_name)
        out.append((segment.GetName(), 0 if rep is None else rep.GetMTime()))
    return tuple(out)


def segment_tag(segment, tag_name: str) -> str:
    """A segment's tag value ("" if absent)."""
    value = vtk.reference("")
    return str(value) if segment.GetTag(tag_name, value) else ""


def segment_label_values(node) -> dict:
    """{segment name: label value} from the ``QSMPlanner.LabelValue`` tags."""
    seg = node.GetSegmentation()
    out = {}
    for i in range(seg.GetNumberOfSegments()):
        s = seg.GetNthSegment(i)
        tag = segment_tag(s, "QSMPlanner.LabelValue")
        if tag:
            out[s.GetName()] = int(tag)
    return out


# --------------------------------------------------------------------------------------------------
# markups
# --------------------------------------------------------------------------------------------------
def add_fiducials(scene, points: dict, name: str = "F", *, color=(1.0, 1.0, 0.2), locked: bool = False,
                  parent_transform=None, replace: bool = True):
    """Markups fiducial list, one control point per ``{label: (R, A, S) mm}`` in dict order."""
    node = _new_node(scene, "vtkMRMLMarkupsFiducialNode", name, replace)
    node.CreateDefaultDisplayNodes()
    for label, ras in points.items():
        idx = node.AddControlPoint(vtk.vtkVector3d(*[float(v) for v in np.asarray(ras, float)[:3]]),
                                   str(label))
        node.SetNthControlPointLabel(idx, str(label))
    node.SetLocked(bool(locked))
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*color)
        display.SetColor(*color)
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


def fiducials_to_dict(node, world: bool = False) -> dict:
    """{label: np.array(R, A, S)} from a markups node (``world``: after parent transforms)."""
    out = {}
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        if world:
            node.GetNthControlPointPositionWorld(i, p)
        else:
            node.GetNthControlPointPosition(i, p)
        out[node.GetNthControlPointLabel(i)] = np.array(p, float)
    return out


def set_control_point(node, label: str, ras) -> int:
    """Move the control point ``label`` of ``node`` to ``ras`` (world RAS mm), adding it if missing."""
    xyz = [float(v) for v in np.asarray(ras, float)[:3]]
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointLabel(i) == label:
            node.SetNthControlPointPositionWorld(i, *xyz)
            return i
    idx = node.AddControlPointWorld(vtk.vtkVector3d(*xyz), label)
    node.SetNthControlPointLabel(idx, label)
    return idx


def add_line(scene, start_ras, end_ras, name: str = "Trajectory", *, labels=("entry", "target"),
             color=(0.1, 0.9, 0.3), parent_transform=None, replace: bool = True):
    """Markups line from ``start_ras`` (entry) to ``end_ras`` (target), RAS mm."""
    node = _new_node(scene, "vtkMRMLMarkupsLineNode", name, replace)
    node.CreateDefaultDisplayNodes()
    for label, p in zip(labels, (start_ras, end_ras)):
        idx = node.AddControlPoint(vtk.vtkVector3d(*[float(v) for v in np.asarray(p, float)[:3]]), label)
        node.SetNthControlPointLabel(idx, label)
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*color)
        display.SetColor(*color)
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


# --------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------
def add_transform(scene, parent_from_child, name: str = "Transform", *, parent_transform=None,
                  replace: bool = True):
    """Linear transform node whose "to parent" matrix is ``parent_from_child`` (RAS->RAS 4x4).

    E.g. ``t1_from_gre``: put the GRE/QSM nodes under it and they appear in T1 space."""
    node = _new_node(scene, "vtkMRMLLinearTransformNode", name, replace)
    node.SetMatrixTransformToParent(vtk_matrix(parent_from_child))
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


def transform_matrix(node) -> np.ndarray:
    """The "to parent" matrix of a linear transform node."""
    vm = vtk.vtkMatrix4x4()
    node.GetMatrixTransformToParent(vm)
    return np_matrix(vm)


def world_from_node_matrix(node) -> np.ndarray:
    """Matrix mapping the node's own coordinates to world RAS (through all linear parent transforms)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ProcessingError(f"the transform above {node.GetName()!r} is not linear")
    vm = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(vm)
    return np_matrix(vm)


def set_parent_transform(node, transform_node, harden: bool = False):
    """Observe ``transform_node`` (or none); ``harden=True`` bakes it into the node's data/geometry."""
    node.SetAndObserveTransformNodeID(transform_node.GetID() if transform_node is not None else None)
    if harden and transform_node is not None:
        slicer.vtkSlicerTransformLogic().hardenTransform(node)
    return node


# --------------------------------------------------------------------------------------------------
# models and tables
# --------------------------------------------------------------------------------------------------
def add_model(scene, polydata, name: str = "Model", *, color=(0.8, 0.8, 0.8), opacity: float = 1.0,
              slice_intersection: bool = True, parent_transform=None, replace: bool = True):
    """Model node from a vtkPolyData in RAS mm (e.g. an electrode)."""
    node = _new_node(scene, "vtkMRMLModelNode", name, replace)
    node.SetAndObservePolyData(polydata)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetColor(*color)
    display.SetOpacity(float(opacity))
    display.SetScalarVisibility(False)  # plain colour, whatever arrays the polydata carries
    if hasattr(display, "SetVisibility2D"):
        display.SetVisibility2D(bool(slice_intersection))
    if parent_transform is not None:
        node.SetAndObserveTransformNodeID(parent_transform.GetID())
    return node


def mask_surface(mask: Volume, step: int = 2, iterations: int = 15):
    """vtkPolyData of a binary mask's surface (RAS mm), decimated by sampling every ``step`` voxels."""
    data = (np.asarray(mask.data[::step, ::step, ::step]) > 0).astype(np.uint8)
    img = vtk.vtkImageData()
    img.SetDimensions(*data.shape)
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(data.transpose(2, 1, 0)).ravel(),
                                                             deep=True))
    surf = vtk.vtkFlyingEdges3D()
    surf.SetInputData(img)
    surf.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surf.GetOutputPort())
    smooth.SetNumberOfIterations(iterations)
    xf = vtk.vtkTransform()
    m = mask.ras_from_ijk.copy()
    m[:3, :3] = m[:3, :3] * step
    xf.SetMatrix(vtk_matrix(m))
    to_ras = vtk.vtkTransformPolyDataFilter()
    to_ras.SetTransform(xf)
    to_ras.SetInputConnection(smooth.GetOutputPort())
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(to_ras.GetOutputPort())
    normals.Update()
    out = vtk.vtkPolyData()
    out.DeepCopy(normals.GetOutput())
    return out


def add_table(scene, rows: list, name: str = "Table", *, columns: list | None = None, replace: bool = True):
    """Table node from a list of dicts (one per row). Numbers become double columns, the rest strings."""
    node = _new_node(scene, "vtkMRMLTableNode", name, replace)
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    table = node.GetTable()
    for col in columns:
        values = [r.get(col) for r in rows]
        numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
                      for v in values if v is not None) and any(v is not None for v in values)
        arr = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
        arr.SetName(str(col))
        for v in values:
            if numeric:
                arr.InsertNextValue(float("nan") if v is None else float(v))
            else:
                arr.InsertNextValue("" if v is None else str(v))
        table.AddColumn(arr)
    # column names as the header, not as an editable first row of the table views (Slicer's default)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.Modified()
    return node


def add_plot_chart(scene, table_node, name: str, x_column: str, y_columns: dict, *, title: str = "",
                   x_title: str = "", y_title: str = ""):
    """A plot chart of ``table_node``: one scatter series per column of ``y_columns`` ({column: RGB}) against
    ``x_column``. None where the plot nodes are not available."""
    if not hasattr(slicer, "vtkMRMLPlotSeriesNode"):
        return None
    chart = _new_node(scene, "vtkMRMLPlotChartNode", name)
    for column, colour in y_columns.items():
        series = _new_node(scene, "vtkMRMLPlotSeriesNode", f"{name} {column}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetColor(*colour)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    return chart


def table_to_rows(node) -> list[dict]:
    """List of dicts from a table node (numeric columns as float, others as str)."""
    table = node.GetTable()
    cols = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for col in cols:
            v = col.GetValue(r)
            if isinstance(col, vtk.vtkStringArray):
                row[col.GetName()] = str(v)
            else:
                row[col.GetName()] = float(v)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# bundles
# --------------------------------------------------------------------------------------------------
def _file_name(node, used: set, ext: str) -> str:
    base = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in node.GetName()) or "node"
    name, i = f"{base}{ext}", 1
    while name in used:
        i += 1
        name = f"{base}_{i}{ext}"
    used.add(name)
    return name


def _default_extension(node, storage) -> str:
    cls = node.GetClassName()
    if cls == "vtkMRMLSegmentationNode":
        return ".seg.nrrd"
    if "Markups" in cls:
        return ".mrk.json"
    if cls == "vtkMRMLTableNode":
        return ".tsv"
    if "Transform" in cls:
        return ".h5"
    if cls == "vtkMRMLModelNode":
        return ".vtk"
    if "VolumeNode" in cls:
        return ".nrrd"
    ext = storage.GetDefaultWriteFileExtension()
    return "." + ext if ext else ".dat"


def _eligible_for_bundle(node) -> bool:
    if node.GetHideFromEditors() and not node.IsA("vtkMRMLTransformNode"):
        return False
    if not node.GetSaveWithScene():
        return False
    if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
        return False
    return not (node.IsA("vtkMRMLTransformNode") and node.GetName() == "")


def _file_names(storage) -> tuple:
    """(file name, additional file names) of a storage node."""
    return storage.GetFileName(), tuple(storage.GetNthFileName(i) for i in range(storage.GetNumberOfFileNames()))


class _SceneSaveState:
    """What writing a bundle changes in the open scene, recorded so that it can be put back: the scene URL,
    root directory and version, every storage node's file name(s) and compression, and the storage nodes
    added for nodes that had none (removed again)."""

    def __init__(self, scene):
        self.scene = scene
        self.url, self.root, self.version = scene.GetURL(), scene.GetRootDirectory(), scene.GetVersion()
        self.storage = {}
        for storage in nodes_by_class(scene, "vtkMRMLStorageNode"):
            self.storage[storage.GetID()] = (storage, _file_names(storage), storage.GetUseCompression())
        self.added = []  # (storable node, storage node it got)

    def storage_for(self, node):
        storage = node.GetStorageNode()
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            if storage is not None:
                self.added.append((node, storage))
        return storage

    def restore(self):
        for node, storage in self.added:
            node.SetAndObserveStorageNodeID(None)
            self.scene.RemoveNode(storage)
        for storage, (file_name, file_names), compression in self.storage.values():
            storage.ResetFileNameList()
            storage.SetFileName(file_name)
            for name in file_names:
                storage.AddFileName(name)
            storage.SetUseCompression(compression)
        self.scene.SetURL(self.url)
        self.scene.SetRootDirectory(self.root)
        self.scene.SetVersion(self.version)


def save_mrb(scene, path) -> Path:
    """Write every storable node and the scene to a Slicer bundle ``path`` (.mrb), atomically, and leave the
    open scene as it was (URL, root directory, storage nodes and their file names).

    Nodes are written compressed into a temporary folder ``<stem>/Data/`` (gzip NRRD volumes, .seg.nrrd
    segmentations, .mrk.json markups, .h5 transforms, .vtk models, .tsv tables) beside ``<stem>/<stem>.mrml``,
    which is then zipped as Slicer's own bundles are laid out (deflate for what is not compressed yet).
    Outside the Slicer application the scene file header names ``SLICER_SCENE_VERSION`` (see there)."""
    path = Path(path).resolve()
    if path.suffix.lower() != ".mrb":
        raise InputError("a Slicer bundle must end in .mrb", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".part", dir=path.parent))
    state = _SceneSaveState(scene)
    try:
        bundle_dir = work / path.stem
        data_dir = bundle_dir / "Data"
        data_dir.mkdir(parents=True)
        used: set = set()
        for node in nodes_by_class(scene, "vtkMRMLStorableNode"):
            if not _eligible_for_bundle(node):
                continue
            storage = state.storage_for(node)
            if storage is None:
                continue
            file_path = data_dir / _file_name(node, used, _default_extension(node, storage))
            storage.ResetFileNameList()
            storage.SetFileName(str(file_path))
            storage.SetUseCompression(1)
            if not storage.WriteData(node):
                raise ProcessingError(f"could not write node {node.GetName()!r} to {file_path}")
        mrml_path = bundle_dir / (path.stem + ".mrml")
        scene.SetRootDirectory(str(bundle_dir))
        scene.SetURL(str(mrml_path))
        if not str(scene.GetVersion()).startswith("Slicer "):
            scene.SetVersion(SLICER_SCENE_VERSION)
        if not scene.Commit():
            raise ProcessingError(f"could not write the MRML scene file {mrml_path}")
        part = work / path.name
        _zip_folder(bundle_dir, part)
        os.chmod(part, 0o644)
        os.replace(part, path)
    finally:
        state.restore()
        shutil.rmtree(work, ignore_errors=True)
    return path


def _zip_folder(folder: Path, zip_path: Path) -> None:
    """Zip ``folder`` as ``<folder name>/...``: deflate, except files compressed already (gzip NRRD volumes
    and segmentations, .gz, PNG), which are stored as they are."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        archive.write(folder, folder.name + "/")
        for file in sorted(folder.rglob("*")):
            stored = file.is_file() and _compressed_already(file)
            archive.write(file, str(Path(folder.name) / file.relative_to(folder)),
                          compress_type=zipfile.ZIP_STORED if stored else None)


def _compressed_already(file: Path) -> bool:
    with open(file, "rb") as f:
        head = f.read(4096)
    if head.startswith((b"\x1f\x8b", b"\x89PNG")):
        return True
    if head.startswith(b"NRRD"):
        header = head.split(b"\n\n", 1)[0]
        return any(line.strip() in (b"encoding: gzip", b"encoding: gz", b"encoding: bzip2", b"encoding: bz2")
                   for line in header.splitlines())
    return False


def load_mrb(path, scene=None):
    """Read a Slicer bundle into ``scene`` (a fresh one from ``new_scene()`` if None); returns the scene."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError("file not found", path)
    if scene is None:
        scene = new_scene()
    if not scene.ReadFromMRB(str(path), True):
        raise InputError("could not read the Slicer bundle", path)
    return scene


# --------------------------------------------------------------------------------------------------
# a whole result set -> scene
# --------------------------------------------------------------------------------------------------
def _as_labelmap_and_names(value):
    """Accept a NucleiSegmentation-like object (.labelmap, .names), (Volume, names) or a dict."""
    if hasattr(value, "labelmap"):
        names = value.names
        if not isinstance(names, dict):
            names = {i + 1: n for i, n in enumerate(names)}
        return value.labelmap, names
    if isinstance(value, dict):
        return value["labelmap"], value["names"]
    labelmap, names = value
    return labelmap, names


def build_scene(results: dict, path_mrb=None, scene=None):
    """Build a scene from QSMPlanner results, optionally saved as ``path_mrb``. Returns the scene.

    ``results`` keys (all optional; coordinates RAS mm, matrices RAS->RAS):
      "transforms":    {name: parent_from_child 4x4}  (transform nodes; created first)
      "volumes":       {name: Volume}  (names containing "qsm" or "chi" get the QSM display)
      "labelmaps":     {name: Volume}  (labelmap volume nodes)
      "segmentations": {name: NucleiSegmentation | (labelmap Volume, {value: name})}
      "points":        {list name: {label: ras}}  (markups fiducials, e.g. "Landmarks": AC/PC/MS)
      "lines":         {name: (entry_ras, target_ras)}  (markups lines: trajectories)
      "models":        {name: vtkPolyData}  (e.g. electrodes)
      "tables":        {name: [row dict, ...]}
      "parents":       {node name: transform name}  (observed, not hardened)
      "harden":        [node name, ...]  (harden these after parenting)
    Shortcuts: "qsm", "t1", "ct" (Volume -> volumes "QSM", "T1", "CT"), "segmentation" (-> "Nuclei"),
    "landmarks" ({AC, PC, MS} -> points "AC-PC-MS").
    """
    if scene is None:
        scene = new_scene()
    results = dict(results)
    volumes = dict(results.get("volumes") or {})
    for key, name in (("qsm", "QSM"), ("t1", "T1"), ("ct", "CT")):
        if isinstance(results.get(key), Volume):
            volumes.setdefault(name, results[key])
    results["volumes"] = volumes
    if results.get("segmentation") is not None:
        results["segmentations"] = {"Nuclei": results["segmentation"], **(results.get("segmentations") or {})}
    if results.get("landmarks"):
        results["points"] = {"AC-PC-MS": results["landmarks"], **(results.get("points") or {})}
    made = {}
    for name, m in (results.get("transforms") or {}).items():
        made[name] = add_transform(scene, m, name)
    for name, vol in (results.get("volumes") or {}).items():
        lname = name.lower()
        kind = "qsm" if ("qsm" in lname or "chi" in lname) else "scalar"
        window = (-100.0, 1500.0) if name == "CT" else None
        made[name] = add_volume(scene, vol, name, kind=kind, window=window)
    for name, vol in (results.get("labelmaps") or {}).items():
        made[name] = add_volume(scene, vol, name, kind="labelmap")
    for name, value in (results.get("segmentations") or {}).items():
        labelmap, names = _as_labelmap_and_names(value)
        made[name] = add_segmentation(scene, labelmap, names, name)
    for name, points in (results.get("points") or {}).items():
        made[name] = add_fiducials(scene, points, name)
    for name, (entry, target) in (results.get("lines") or {}).items():
        made[name] = add_line(scene, entry, target, name)
    for name, poly in (results.get("models") or {}).items():
        made[name] = add_model(scene, poly, name, color=(0.85, 0.85, 0.9))
    for name, rows in (results.get("tables") or {}).items():
        made[name] = add_table(scene, rows, name)
    hardened = set(results.get("harden") or [])
    for node_name, transform_name in (results.get("parents") or {}).items():
        if node_name not in made or transform_name not in made:
            raise InputError(f"parents: unknown node {node_name!r} or transform {transform_name!r}",
                             "results")
        set_parent_transform(made[node_name], made[transform_name], harden=node_name in hardened)
    if path_mrb is not None:
        save_mrb(scene, path_mrb)
    return scene
