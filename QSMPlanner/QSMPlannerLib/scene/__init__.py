"""MRML scenes for 3D Slicer: results as nodes (``present``), Slicer bundles (.mrb), offscreen pictures.

Only this subpackage imports ``slicer`` (real MRML: the 3D Slicer application or the PyPI ``slicer-core``
wheel). Import ``QSMPlannerLib.scene.mrml`` / ``.present`` explicitly; importing this package itself does
not load MRML.
"""


def build_scene(results: dict, path_mrb=None, scene=None):
    """See ``mrml.build_scene``."""
    from .mrml import build_scene as _build
    return _build(results, path_mrb, scene)


def save_mrb(scene, path):
    from .mrml import save_mrb as _save
    return _save(scene, path)


def load_mrb(path, scene=None):
    from .mrml import load_mrb as _load
    return _load(path, scene)
