"""Offscreen pictures of a MRML scene drawn by Slicer's own displayable managers (no application, no GPU).

A slice view: ``vtkMRMLSliceLogic`` reslices and blends the volume layers (window/level and colour maps of
the display nodes); the 2-D displayable managers draw segmentations (fill + outline), markups and model
intersections (electrodes) on top. A 3-D view: the 3-D displayable managers draw segment surfaces,
models and markups. Rendering goes through VTK's EGL window (Mesa llvmpipe when there is no GPU); set
``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` to skip the X probe.
"""
from __future__ import annotations

import os

import numpy as np

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402

from ..io.atomic import atomic_path  # noqa: E402
from . import mrml  # noqa: E402

SLICE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLModelSliceDisplayableManager",
                  "vtkMRMLMarkupsDisplayableManager")
THREED_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                   "vtkMRMLModelDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D",
                   "vtkMRMLMarkupsDisplayableManager")


def _app_logic(scene):
    logics = mrml.scene_logics(scene)
    if logics is not None:
        return logics.app
    if mrml.in_slicer_application():
        return slicer.app.applicationLogic()
    raise RuntimeError("the scene was not made by mrml.new_scene(): no application logic to render with")


def _window(size):
    renderer = vtk.vtkRenderer()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.AddRenderer(renderer)
    window.SetSize(int(size[0]), int(size[1]))
    interactor = vtk.vtkRenderWindowInteractor()  # displayable managers need one
    interactor.SetRenderWindow(window)
    interactor.Initialize()
    return renderer, window, interactor


def _group(factory_class, managers, app_logic, renderer):
    factory = factory_class.GetInstance()
    factory.SetMRMLApplicationLogic(app_logic)
    for name in managers:
        if not factory.IsDisplayableManagerRegistered(name):
            factory.RegisterDisplayableManager(name)
    group = slicer.vtkMRMLDisplayableManagerGroup()
    group.SetRenderer(renderer)
    group.Initialize(factory, renderer)
    return group


def _grab(window) -> np.ndarray:
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    img = grab.GetOutput()
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(arr[::-1, :, :3])


def render_slice(scene, background_node, *, foreground_node=None, foreground_opacity: float = 0.5,
                 normal=(0.0, 0.0, 1.0), transverse=(1.0, 0.0, 0.0), center_ras=None, fov_mm: float | None = None,
                 size=(512, 512), view_name: str = "QSMPlannerOffscreen") -> np.ndarray:
    """RGB (H, W, 3) uint8 of a slice view through ``center_ras`` with plane ``normal`` (RAS); ``transverse``
    points to the image's right. Defaults: axial through the background's centre, field of view fitted."""
    app = _app_logic(scene)
    renderer, window, _ = _window(size)
    renderer.GetActiveCamera().ParallelProjectionOn()
    group = _group(slicer.vtkMRMLSliceViewDisplayableManagerFactory, SLICE_MANAGERS, app, renderer)
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app)
    logic.SetMRMLScene(scene)
    slice_node = logic.AddSliceNode(view_name)
    group.SetMRMLDisplayableNode(slice_node)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(background_node.GetID())
    if foreground_node is not None:
        composite.SetForegroundVolumeID(foreground_node.GetID())
        composite.SetForegroundOpacity(float(foreground_opacity))
    logic.ResizeSliceNode(int(size[0]), int(size[1]))
    logic.FitSliceToAll(int(size[0]), int(size[1]))
    if center_ras is None:
        bounds = [0.0] * 6
        background_node.GetRASBounds(bounds)
        center_ras = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
    slice_node.SetSliceToRASByNTP(*[float(v) for v in normal], *[float(v) for v in transverse],
                                  *[float(v) for v in center_ras], 0)
    if fov_mm is not None:
        fov = slice_node.GetFieldOfView()
        slice_node.SetFieldOfView(float(fov_mm), float(fov_mm) * size[1] / size[0], fov[2])
    slice_node.UpdateMatrices()
    mapper = vtk.vtkImageMapper()
    mapper.SetColorWindow(255)
    mapper.SetColorLevel(127.5)
    mapper.SetInputConnection(logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(mapper)
    actor.GetProperty().SetDisplayLocationToBackground()
    renderer.AddViewProp(actor)
    try:
        return _grab(window)
    finally:
        group.SetMRMLDisplayableNode(None)
        scene.RemoveNode(composite)
        scene.RemoveNode(slice_node)
        window.Finalize()


def render_3d(scene, *, size=(640, 480), view_direction=(-0.35, 1.0, 0.45), distance_mm: float | None = None,
              focus_ras=None, view_up=(0.0, 0.0, 1.0), background=(0.08, 0.09, 0.12)) -> np.ndarray:
    """RGB (H, W, 3) uint8 of a 3-D view of every visible model, segmentation (closed surfaces) and markup.

    The camera looks at ``focus_ras`` (default: centre of everything shown) from ``view_direction`` (RAS,
    from the focus towards the eye) at ``distance_mm`` (default: fitted)."""
    app = _app_logic(scene)
    for seg in mrml.nodes_by_class(scene, "vtkMRMLSegmentationNode"):
        display = seg.GetDisplayNode()
        if display is not None and display.GetVisibility():
            seg.CreateClosedSurfaceRepresentation()
    renderer, window, _ = _window(size)
    group = _group(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, THREED_MANAGERS, app, renderer)
    view = scene.AddNewNodeByClass("vtkMRMLViewNode")
    view.SetBackgroundColor(*background)
    view.SetBackgroundColor2(*background)
    view.SetBoxVisible(False)
    view.SetAxisLabelsVisible(False)
    group.SetMRMLDisplayableNode(view)
    renderer.ResetCamera()
    camera = renderer.GetActiveCamera()
    focus = np.asarray(focus_ras if focus_ras is not None else camera.GetFocalPoint(), float)
    direction = np.asarray(view_direction, float)
    direction /= np.linalg.norm(direction)
    distance = float(distance_mm) if distance_mm is not None else camera.GetDistance()
    camera.SetFocalPoint(*focus)
    camera.SetPosition(*(focus + distance * direction))
    camera.SetViewUp(*view_up)
    camera.OrthogonalizeViewUp()
    renderer.ResetCameraClippingRange()
    try:
        return _grab(window)
    finally:
        group.SetMRMLDisplayableNode(None)
        for cam in mrml.nodes_by_class(scene, "vtkMRMLCameraNode"):
            if cam.GetLayoutName() == view.GetLayoutName() or not cam.GetLayoutName():
                scene.RemoveNode(cam)
        scene.RemoveNode(view)
        window.Finalize()


def picture_stats(rgb: np.ndarray) -> dict:
    """Content checks: grey-level spread and the fraction of clearly coloured (overlay) pixels."""
    rgb = np.asarray(rgb, float)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return {"std": float(rgb.std()), "coloured_fraction": float((chroma > 60).mean()),
            "non_background_fraction": float((np.abs(rgb - rgb[0, 0]).sum(axis=2) > 30).mean())}


def save_png(rgb: np.ndarray, path, max_kb: int | None = None):
    """Write an RGB array as PNG, atomically (palette-quantized if it would exceed ``max_kb``)."""
    from PIL import Image
    img = Image.fromarray(np.asarray(rgb, np.uint8))
    with atomic_path(path) as tmp:
        img.save(tmp, optimize=True)
        if max_kb is not None and os.path.getsize(tmp) > max_kb * 1024:
            img.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(tmp, optimize=True)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
    return path
