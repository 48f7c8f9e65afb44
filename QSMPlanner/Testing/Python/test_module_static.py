"""Static checks of the Slicer module (no Slicer needed): the panel (.ui) and QSMPlanner.py agree, every
SlicerParameterName is a parameter field, the CMake lists cover the whole tree, the extension metadata is
complete, the requirements resolve to importable modules."""
import ast
import fnmatch
import importlib.util
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2]
REPO = MODULE_DIR.parent
MODULE_PY = MODULE_DIR / "QSMPlanner.py"
UI = MODULE_DIR / "Resources" / "UI" / "QSMPlanner.ui"
LOGIC_PY = MODULE_DIR / "QSMPlannerLib" / "panel" / "logic.py"


@pytest.fixture(scope="module")
def module_ast():
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ui_root():
    return ET.parse(UI).getroot()


def _ui_widgets(root) -> dict:
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_fields(tree) -> dict:
    """{field: annotation source} of the @parameterNodeWrapper class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(
                (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list):
            return {st.target.id: ast.unparse(st.annotation) for st in node.body
                    if isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)}
    raise AssertionError("no @parameterNodeWrapper class in QSMPlanner.py")


def _slicer_parameter_names(root) -> dict:
    """{widget name: parameter name} from the SlicerParameterName dynamic properties."""
    out = {}
    for w in root.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[w.get("name")] = p.find("string").text
    return out


def test_module_file_compiles(tmp_path):
    py_compile.compile(str(MODULE_PY), cfile=str(tmp_path / "QSMPlanner.pyc"), doraise=True)


def test_every_ui_attribute_used_by_the_widget_exists_in_the_ui(module_ast, ui_root):
    used = {n.attr for n in ast.walk(module_ast)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui" and isinstance(n.value.value, ast.Name) and n.value.value.id == "self"}
    assert len(used) > 20
    missing = used - set(_ui_widgets(ui_root))
    assert not missing, f"self.ui.<name> without a widget in QSMPlanner.ui: {sorted(missing)}"


def test_every_slicer_parameter_name_is_a_parameter_field_and_every_field_is_shown(module_ast, ui_root):
    fields = _parameter_fields(module_ast)
    bound = _slicer_parameter_names(ui_root)
    unknown = {w: p for w, p in bound.items() if p not in fields}
    assert not unknown, f"SlicerParameterName without a parameter field: {unknown}"
    assert len(set(bound.values())) == len(bound), "two widgets bound to the same parameter"
    unshown = set(fields) - set(bound.values())
    assert not unshown, f"parameter fields with no widget: {sorted(unshown)}"


def test_widget_types_match_parameter_types(module_ast, ui_root):
    fields = _parameter_fields(module_ast)
    widgets = _ui_widgets(ui_root)
    for wname, pname in _slicer_parameter_names(ui_root).items():
        cls = widgets[wname].get("class")
        ann = fields[pname]
        if ann.startswith("vtkMRML"):
            assert cls == "qMRMLNodeComboBox", (wname, cls, ann)
            types = [s.text for s in widgets[wname].find("property[@name='nodeTypes']").iter("string")]
            assert types == [ann], (wname, types, ann)
        elif "Choice" in ann:
            assert cls == "QComboBox", (wname, cls)
            choices = ast.literal_eval(re.search(r"Choice\((\[.*?\])\)", ann).group(1))
            items = [i.find("property/string").text for i in widgets[wname].findall("item")]
            assert items == choices, (wname, items, choices)
        elif ann == "bool":
            assert cls == "QCheckBox", (wname, cls)
        elif ann.startswith("float") or "float" in ann:
            assert cls in ("QDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSpinBox"), (wname, cls)
        elif ann == "str":
            assert cls == "QLineEdit", (wname, cls)
        elif "pathlib.Path" in ann:
            assert cls == "ctkPathLineEdit", (wname, cls)
        else:
            raise AssertionError(f"no rule for parameter {pname}: {ann}")


def test_node_comboboxes_get_the_scene(ui_root):
    combos = {w.get("name") for w in ui_root.iter("widget")
              if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    connected = {c.find("receiver").text for c in ui_root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    assert combos and combos <= connected, sorted(combos - connected)


def test_panel_sections_in_workflow_order(ui_root):
    titles = [w.find("property[@name='text']/string").text for w in ui_root.iter("widget")
              if w.get("class") == "ctkCollapsibleButton"]
    assert titles == ["Inputs", "QSM", "Registration", "Segmentation", "Landmarks", "Trajectory",
                      "Frame and export"]
    declared = {c.find("class").text for c in ui_root.iter("customwidget")}
    used = {w.get("class") for w in ui_root.iter("widget")} - {
        "QPushButton", "QLabel", "QComboBox", "QCheckBox", "QLineEdit", "QDoubleSpinBox", "QProgressBar"}
    assert used <= declared, sorted(used - declared)


def test_widget_calls_only_existing_planner_methods(module_ast):
    """Every planner.<method>(...) the module calls exists on PlannerLogic (catches API drift)."""
    logic = ast.parse(LOGIC_PY.read_text(encoding="utf-8"))
    cls = next(n for n in logic.body if isinstance(n, ast.ClassDef) and n.name == "PlannerLogic")
    methods = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)} | {"patient"}
    state = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "reset")]
    methods |= {t.attr for f in state for n in ast.walk(f) if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    called = set()
    for n in ast.walk(module_ast):
        if isinstance(n, ast.Attribute):
            v = n.value
            if isinstance(v, ast.Name) and v.id == "planner":
                called.add(n.attr)
            if isinstance(v, ast.Call) and isinstance(v.func, ast.Attribute) and v.func.attr == "planner":
                called.add(n.attr)
    assert len(called) > 10
    assert not called - methods, sorted(called - methods)


def test_signals_connected_exist_for_the_widget_class(module_ast, ui_root):
    signals = {"QPushButton": {"clicked", "toggled"}, "ctkSliderWidget": {"valueChanged"},
               "QCheckBox": {"toggled", "stateChanged"}, "QComboBox": {"currentIndexChanged"}}
    widgets = _ui_widgets(ui_root)
    for n in ast.walk(module_ast):
        if isinstance(n, ast.Attribute) and n.attr == "connect" and isinstance(n.value, ast.Attribute):
            sig = n.value
            if isinstance(sig.value, ast.Attribute) and isinstance(sig.value.value, ast.Attribute) \
                    and sig.value.value.attr == "ui":
                cls = widgets[sig.value.attr].get("class")
                assert sig.attr in signals.get(cls, set()), (sig.value.attr, cls, sig.attr)


def _cmake_sets(text: str) -> dict:
    """Very small CMake reader: set(VAR ...) and file(GLOB_RECURSE VAR ... patterns) with
    ${CMAKE_CURRENT_SOURCE_DIR} and ${MODULE_NAME} substituted."""
    text = re.sub(r"#[^\n]*", "", text)
    module = re.search(r"set\(MODULE_NAME\s+(\w+)\)", text).group(1)
    text = text.replace("${MODULE_NAME}", module)
    out = {}
    for m in re.finditer(r"file\(GLOB_RECURSE\s+(\w+)(.*?)\)", text, re.S):
        words = m.group(2).split()
        pats = [w.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "") for w in words
                if w.startswith("${CMAKE_CURRENT_SOURCE_DIR}/")]
        out[m.group(1)] = ("glob", pats)
    for m in re.finditer(r"set\((\w+)\s+(.*?)\)", text, re.S):
        out[m.group(1)] = ("list", m.group(2).split())
    return out


def _expand(sets, name, tree_files) -> set:
    kind, items = sets[name]
    if kind == "glob":
        return {f for f in tree_files for p in items if fnmatch.fnmatch(f, p) and "__pycache__" not in f}
    out = set()
    for item in items:
        m = re.fullmatch(r"\$\{(\w+)\}", item)
        out |= _expand(sets, m.group(1), tree_files) if m else {item}
    return out


def test_module_cmakelists_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    tree = sorted(str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p))
    sets = _cmake_sets(text)
    scripts = _expand(sets, "MODULE_PYTHON_SCRIPTS", tree)
    resources = _expand(sets, "MODULE_PYTHON_RESOURCES", tree)
    for f in scripts | resources:
        assert (MODULE_DIR / f).is_file(), f"CMakeLists lists a missing file: {f}"
    lib_py = {f for f in tree if f.startswith("QSMPlannerLib/") and f.endswith(".py")}
    assert "QSMPlanner.py" in scripts
    assert lib_py and lib_py <= scripts, sorted(lib_py - scripts)
    lib_data = {f for f in tree if f.startswith("QSMPlannerLib/") and not f.endswith((".py", ".pyc"))}
    assert lib_data <= resources, f"data files in QSMPlannerLib not installed: {sorted(lib_data - resources)}"
    res = {f for f in tree if f.startswith("Resources/")}
    assert res and res <= resources, sorted(res - resources)


def test_extension_cmakelists_has_the_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({var}\s+\"[^\"]+\"\)", text), var
    assert 'set(EXTENSION_CATEGORY "Neurosurgery")' in text
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(QSMPlanner)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, line
    for shot in re.search(r'EXTENSION_SCREENSHOTURLS\s+"([^"]+)"', text).group(1).split():
        assert shot.endswith(".png")


def test_icon_is_a_128_pixel_png():
    from PIL import Image
    with Image.open(MODULE_DIR / "Resources" / "Icons" / "QSMPlanner.png") as im:
        assert im.format == "PNG" and im.size == (128, 128)
        import numpy as np
        arr = np.asarray(im.convert("RGB"), float)
        assert arr.std() > 20  # not a blank square


def test_requirements_resolve_to_importable_modules(module_ast):
    names = next(ast.literal_eval(n.value) for n in module_ast.body
                 if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "IMPORT_NAMES")
    lines = [ln.split("#")[0].strip() for ln in
             (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()]
    reqs = [re.split(r"[<>=~\[]", ln)[0].strip() for ln in lines if ln]
    assert {"nibabel", "scikit-image", "numba"} <= set(reqs)
    for r in reqs:
        module = names.get(r, r.replace("-", "_"))
        assert importlib.util.find_spec(module) is not None, f"{r} -> import {module} not found"


def test_acknowledgement_cites_the_atlases(module_ast):
    src = MODULE_PY.read_text(encoding="utf-8")
    assert "Fonov" in src and "Pauli" in src and "Scientific Data 5:180063" in src
    assert 'self.parent.categories = ["Neurosurgery"]' in src
    assert "registerCustomSampleDataSource" in src and "customDownloader=loadDigitalPatient" in src
