"""Packaging that fits inside 3D Slicer: ``Resources/requirements.txt`` (what the module pip-installs into
Slicer's Python) never lists a package Slicer bundles, pins one version per Slicer Python, agrees with
pyproject.toml, and covers every third-party import of QSMPlannerLib; every module imports on this Python;
in the CI matrix (``QSMPLANNER_SLICER_PINS``) the bundled packages are exactly Slicer's versions."""
import ast
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import shlex
import sys
import sysconfig
from pathlib import Path

import pytest

import QSMPlannerLib

MODULE_DIR = Path(__file__).resolve().parents[2]          # QSMPlanner/
REPO_ROOT = MODULE_DIR.parent
REQUIREMENTS = MODULE_DIR / "Resources" / "requirements.txt"

# Python packages 3D Slicer 5.8 and 5.12 bundle (SuperBuild/External_python-*.cmake, External_VTK.cmake,
# External_SimpleITK.cmake): the module must never install other versions of these.
SLICER_BUNDLED = {"numpy", "scipy", "simpleitk", "vtk", "pydicom", "pillow",
                  "pip", "packaging"}   # External_python-pip.cmake, External_python-packaging.cmake
# Modules that exist only inside the Slicer application (or come with the slicer-core wheel outside it).
SLICER_APPLICATION = {"slicer", "qt", "ctk", "SampleData", "vtkmodules"}
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"SimpleITK": "simpleitk", "PIL": "pillow", "skimage": "scikit-image", "vtkmodules": "vtk"}
SLICER_PYTHONS = ((3, 9), (3, 12))   # Slicer 5.8, Slicer 5.12


def _requirements(path):
    """[(name, version, marker or None)] of a pip requirements file of ``name==version[; marker]`` lines
    (``-r`` includes are not followed)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r "):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*(?:;\s*(.+))?", line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        out.append((m.group(1).lower(), m.group(2), m.group(3)))
    return out


def _applies(marker, python):
    """Evaluate the ``python_version <op> "X.Y"`` markers used here for ``python`` (major, minor)."""
    if marker is None:
        return True
    m = re.fullmatch(r"""python_version\s*(<|<=|>=|>|==)\s*["'](\d+)\.(\d+)["']""", marker.strip())
    assert m, f"unsupported marker {marker!r}"
    other = (int(m.group(2)), int(m.group(3)))
    return {"<": python < other, "<=": python <= other, ">=": python >= other, ">": python > other,
            "==": python == other}[m.group(1)]


def _pins_for(requirements, python):
    pins = {}
    for name, version, marker in requirements:
        if _applies(marker, python):
            assert name not in pins, f"{name} pinned twice for Python {python}"
            pins[name] = version
    return pins


def _third_party_imports():
    """{top-level module: first file importing it} over QSMPlannerLib and the module file (not stdlib)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    found = {}
    files = sorted(Path(QSMPlannerLib.__file__).parent.rglob("*.py")) + [MODULE_DIR / "QSMPlanner.py"]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ("QSMPlannerLib", "__future__") or top in getattr(sys, "stdlib_module_names", ()):
                    continue
                spec = importlib.util.find_spec(top) if top not in SLICER_APPLICATION else None
                if spec is not None and spec.origin in ("built-in", "frozen"):
                    continue
                origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
                if origin is not None and stdlib in origin.parents and "site-packages" not in origin.parts:
                    continue
                found.setdefault(top, path.relative_to(REPO_ROOT))
    return found


def test_requirements_never_replace_what_slicer_bundles():
    listed = {name for name, _, _ in _requirements(REQUIREMENTS)}
    assert not listed & SLICER_BUNDLED, f"Slicer bundles {sorted(listed & SLICER_BUNDLED)}: do not install them"
    assert listed, "requirements.txt lists nothing"


def test_requirements_pin_one_version_per_slicer_python():
    requirements = _requirements(REQUIREMENTS)
    names = {name for name, _, _ in requirements}
    for python in SLICER_PYTHONS:
        assert set(_pins_for(requirements, python)) == names, f"not every package is pinned for Python {python}"


def test_each_requirement_survives_the_modules_quoting():
    """QSMPlanner.ensureDependencies passes each line double-quoted to slicer.util.pip_install, which splits
    like a shell: the line must come through whole (markers quote their versions with single quotes)."""
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert shlex.split(f'"{line}"') == [line], line


def test_requirements_agree_with_pyproject():
    text = (REPO_ROOT / "pyproject.toml").read_text()
    block = text[text.index("dependencies = ["):]
    block = block[:block.index("]")]
    project = [(m.group(1).lower(), m.group(2), m.group(3))
               for m in re.finditer(r'"([A-Za-z0-9_.\-]+)==([^;"]+)(?:;\s*([^"]+))?"', block)]
    requirements = _requirements(REQUIREMENTS)
    for python in SLICER_PYTHONS:
        in_slicer = _pins_for(requirements, python)
        cli = _pins_for(project, python)
        for name, version in in_slicer.items():
            assert cli.get(name) == version, f"{name}: requirements.txt {version}, pyproject {cli.get(name)} " \
                                             f"(Python {python})"


def test_every_import_is_bundled_by_slicer_or_listed():
    listed = {name for name, _, _ in _requirements(REQUIREMENTS)}
    missing = {}
    for module, path in _third_party_imports().items():
        if module in SLICER_APPLICATION and module != "vtkmodules":
            continue
        distribution = DISTRIBUTION.get(module, module).lower()
        if distribution not in SLICER_BUNDLED and distribution not in listed:
            missing[module] = str(path)
    assert not missing, f"imported but neither bundled by Slicer nor in Resources/requirements.txt: {missing}"


def test_every_module_imports_on_this_python():
    """A module that fails to import on an older Python or package must not hide behind importorskip. Only
    the MRML side (scene/, panel/) may lack ``slicer``: slicer-core needs Python >= 3.10."""
    has_slicer = importlib.util.find_spec("slicer") is not None
    failures = {}
    for info in pkgutil.walk_packages(QSMPlannerLib.__path__, "QSMPlannerLib."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if has_slicer or exc.name not in SLICER_APPLICATION:
                failures[info.name] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its module
            failures[info.name] = f"{type(exc).__name__}: {exc}"
    assert not failures, failures


@pytest.mark.skipif(not os.environ.get("QSMPLANNER_SLICER_PINS"), reason="only in the CI matrix of Slicer Pythons")
def test_matrix_runs_on_slicers_package_versions():
    pins = _pins_for(_requirements(REPO_ROOT / os.environ["QSMPLANNER_SLICER_PINS"]), sys.version_info[:2])
    for name in SLICER_BUNDLED:
        if name in pins:
            assert importlib.metadata.version(name) == pins[name], name
    for name, version in _pins_for(_requirements(REQUIREMENTS), sys.version_info[:2]).items():
        assert importlib.metadata.version(name) == version, name

