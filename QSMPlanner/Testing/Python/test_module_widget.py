"""The module file (QSMPlanner.py) driven headless: the Slicer application pieces it touches (qt.QTimer,
ScriptedLoadableModule bases, parameterNodeWrapper, slicer.app, slicer.modules, GUI dialogs) are replaced by
small fakes that behave as Slicer's do — ``tryWithErrorDisplay`` shows the error and re-raises it; a
``qMRMLTableView`` shows the column names as an editable first row unless the table node uses them as the
header, and its selection is in the coordinates of its sort proxy — the panel's other widgets by mocks named
after the .ui, and the MRML scene, PlannerLogic and the worker processes are real. Buttons are "clicked"
through the connections the widget made; the results are checked on the nodes and files."""
import importlib.util
import sys
import time
import types
import unittest
import xml.etree.ElementTree as ET
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest

pytest.importorskip("slicer")
import slicer  # noqa: E402
import slicer.util  # noqa: E402

from QSMPlannerLib.errors import InputError  # noqa: E402
from QSMPlannerLib.scene import mrml  # noqa: E402
from QSMPlannerLib.workflow import PlanSettings  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_panel_logic import NUCLEI, _nuclei_labelmap, synthetic_patient  # noqa: E402


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def disconnect(self, slot):
        self.slots.remove(slot)

    def emit(self, *args):
        for slot in list(self.slots):
            slot(*args)


class FakeTimer:
    def __init__(self):
        self.timeout = Signal()
        self.active = False

    def setInterval(self, ms):
        self.interval = ms

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class FakeIndex:
    def __init__(self, row):
        self._row = row

    def isValid(self):
        return self._row >= 0

    def row(self):
        return self._row


class FakeTableView:
    """qMRMLTableView as Slicer has it: the model shows the column names as an extra, editable first row
    unless the table node uses them as the header (``UseColumnTitleAsColumnHeader``); the view sits on a
    sort proxy, so a selection maps to the model through ``mapToSource``; ``mrmlTableRowIndex`` gives the
    table row of a model index (-1 for the header row)."""

    def __init__(self):
        self.node = None
        self.selected = -1           # view row
        self.order = None            # view row -> model row after a click on a column header

    def setMRMLTableNode(self, node):
        self.node, self.selected, self.order = node, -1, None

    def header_in_model(self):
        return not (self.node.GetUseColumnTitleAsColumnHeader() or self.node.GetUseColumnNameAsColumnHeader())

    def visible_rows(self):
        return self.node.GetNumberOfRows() + (1 if self.header_in_model() else 0)

    def sort_by(self, column):
        """The user clicks a column header: rows shown sorted by that column (the header row stays first)."""
        rows = mrml.table_to_rows(self.node)
        order = sorted(range(len(rows)), key=lambda i: rows[i][column])
        offset = 1 if self.header_in_model() else 0
        self.order = list(range(offset)) + [i + offset for i in order]

    def currentIndex(self):
        return FakeIndex(self.selected)

    def sortFilterProxyModel(self):
        view = self
        return SimpleNamespace(mapToSource=lambda index: FakeIndex(
            index.row() if view.order is None or index.row() < 0 else view.order[index.row()]))

    def tableModel(self):
        view = self
        return SimpleNamespace(mrmlTableRowIndex=lambda index: index.row() - (1 if view.header_in_model() else 0))


def _fake_modules(ui_names):
    qt = types.ModuleType("qt")
    qt.QTimer = FakeTimer
    qt.QFileDialog = SimpleNamespace(getExistingDirectory=lambda *a: qt.chosen_directory)
    qt.chosen_directory = ""

    sl = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent or SimpleNamespace(isEntered=True)
            self.layout = mock.MagicMock()

        def setup(self):
            pass

        def resourcePath(self, filename):
            return str(MODULE_DIR / "Resources" / filename)

    class ScriptedLoadableModuleLogic:
        _nodes = {}

        def __init__(self):
            pass

        def getParameterNode(self):
            return ScriptedLoadableModuleLogic._nodes.setdefault(id(slicer.mrmlScene), object())

    class ScriptedLoadableModuleTest(unittest.TestCase):
        """As Slicer's: a TestCase whose ``delayDisplay`` shows a message (here: keeps it)."""
        shown = []

        def delayDisplay(self, message, msec=1000):
            ScriptedLoadableModuleTest.shown.append(message)

    sl.ScriptedLoadableModule = ScriptedLoadableModule
    sl.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    sl.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    sl.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    stores = {}

    def parameterNodeWrapper(cls):
        fields = dict(cls.__annotations__)
        defaults = {k: getattr(cls, k, None) for k in fields}

        class Wrapped:
            def __new__(klass, node):  # one state per parameter node, as in Slicer
                if id(node) not in stores:
                    obj = object.__new__(klass)
                    obj.__dict__.update(defaults)
                    obj.gui = None
                    stores[id(node)] = obj
                return stores[id(node)]

            def __init__(self, node):
                pass

            def connectGui(self, ui):
                for name in ui_names:
                    assert hasattr(ui, name)
                self.gui = ui
                return "tag"

            def disconnectGui(self, tag):
                assert tag == "tag"
                self.gui = None

        Wrapped.__name__ = cls.__name__
        Wrapped.fields = fields
        return Wrapped

    pnw.parameterNodeWrapper = parameterNodeWrapper
    return qt, sl, pnw


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Fakes installed, a fresh scene as slicer.mrmlScene, the module imported, its widget set up."""
    ui_root = ET.parse(MODULE_DIR / "Resources" / "UI" / "QSMPlanner.ui").getroot()
    ui_names = [w.get("name") for w in ui_root.iter("widget")]
    qt, sl, pnw = _fake_modules(ui_names)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", sl)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    scene = mrml.new_scene()
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLScene(scene)
    red = slice_logic.AddSliceNode("Red")
    calls = {"errors": [], "layers": [], "modules": [], "pip": [], "charts": []}
    plots = SimpleNamespace(ShowChartInLayout=lambda chart: calls["charts"].append(chart))
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", SimpleNamespace(
        connect=lambda *a: None,
        layoutManager=lambda: SimpleNamespace(sliceWidget=lambda name: SimpleNamespace(mrmlSliceNode=lambda: red))),
        raising=False)
    monkeypatch.setattr(slicer, "modules", SimpleNamespace(
        markups=SimpleNamespace(logic=lambda: mock.MagicMock()), plots=SimpleNamespace(logic=lambda: plots)),
        raising=False)

    def loadUI(path):
        assert Path(path).is_file(), path
        return mock.MagicMock(name="uiWidget")

    def childWidgetVariables(widget):
        ns = SimpleNamespace()
        for name in ui_names:
            m = mock.MagicMock(name=name)
            m.clicked, m.valueChanged = Signal(), Signal()
            setattr(ns, name, m)
        ns.progressBar.value = 0
        ns.probeDepthSlider.value = 0.0
        ns.smallSampleCheckBox.checked = True
        ns.suggestionsTableView = FakeTableView()
        ns.coordinatesTableView = FakeTableView()
        return ns

    @contextmanager
    def tryWithErrorDisplay(message="", show=True, waitCursor=False):
        """As in Slicer: the error is shown, then raised again."""
        try:
            yield
        except Exception as exc:
            if show:
                calls["errors"].append(f"{message} {exc}")
            raise

    monkeypatch.setattr(slicer.util, "loadUI", loadUI)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", childWidgetVariables)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", tryWithErrorDisplay)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: calls["errors"].append(text))
    monkeypatch.setattr(slicer.util, "warningDisplay", lambda text, **kw: calls["errors"].append(text))
    monkeypatch.setattr(slicer.util, "infoDisplay", lambda text, **kw: None)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: calls["layers"].append(kw))
    monkeypatch.setattr(slicer.util, "WaitCursor", nullcontext)
    monkeypatch.setattr(slicer.util, "selectModule", lambda name: calls["modules"].append(name))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **kw: True)
    monkeypatch.setattr(slicer.util, "pip_install", lambda req: calls["pip"].append(req))

    spec = importlib.util.spec_from_file_location("QSMPlanner_under_test", MODULE_DIR / "QSMPlanner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    widget = module.QSMPlannerWidget()
    widget.setup()
    return SimpleNamespace(module=module, widget=widget, ui=widget.ui, p=widget._parameterNode, scene=scene,
                           calls=calls, red=red, tmp=tmp_path, qt=qt)


def _click(button):
    assert button.clicked.slots, "button not connected"
    button.clicked.emit()


def _poll_until_idle(env, timeout_s=240.0):
    """Fire the panel's timer, as Qt would, until no stage is running."""
    w = env.widget
    t0 = time.monotonic()
    while w._task is not None:
        assert time.monotonic() - t0 < timeout_s, "stage did not finish"
        w._timer.timeout.emit()
        time.sleep(0.02)


def test_module_metadata_and_parameter_defaults_are_the_workflows(env):
    m = env.module
    parent = SimpleNamespace()
    m.QSMPlanner(parent)
    assert parent.title == "QSMPlanner" and parent.categories == ["Neurosurgery"]
    assert "CIT168" in parent.acknowledgementText and "ICBM152" in parent.acknowledgementText
    p = env.p
    assert p.gui is env.ui                                    # connectGui bound the panel
    defaults = PlanSettings()
    assert (p.backgroundRemoval, p.inversion, p.mounting, p.electrode, p.marginMm) == (
        defaults.bfr, defaults.inversion, defaults.mounting, defaults.electrode, defaults.margin_mm)
    assert p.side == "left" and p.fieldStrengthT == 3.0 and p.hardenTransforms is False
    assert env.module.QSMPlannerLogic.missingRequirements() == []
    assert env.widget.logic.ensureDependencies(ask=True) and env.calls["pip"] == []
    env.widget.logic.applySettings(p)
    assert env.widget.logic.planner().settings == defaults


def test_missing_requirements_are_those_of_this_python_only(env, monkeypatch, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# comment\nnumpy>=1.0  # present\n"
                   "no-such-package-qsmplanner==1.0; python_version >= '3.0'\n"
                   "other-python-only==2.0; python_version < '3.0'\n"
                   "scikit-image==0.1\n", encoding="utf-8")
    monkeypatch.setattr(env.module, "REQUIREMENTS", str(req))
    assert env.module.QSMPlannerLogic.missingRequirements() == [
        "no-such-package-qsmplanner==1.0; python_version >= '3.0'"]
    assert not env.widget.logic.ensureDependencies(ask=True)      # pip (faked) installed nothing
    assert env.calls["pip"] == ['"no-such-package-qsmplanner==1.0; python_version >= \'3.0\'"']


def test_panel_flow_from_nodes_to_saved_plan(env):
    patient = synthetic_patient()
    planner = env.widget.logic.planner()
    assert planner.scene is env.scene
    nodes = planner.load_patient_nodes(patient, known_transforms=True)
    p, ui = env.p, env.ui
    p.magnitudeVolume, p.phaseVolume = nodes["gre_magnitude"][0], nodes["gre_phase"][0]
    p.t1Volume, p.ctVolume, p.landmarks = nodes["T1"], nodes["CT"], nodes["AC-PC-MS"]
    t_gre = nodes["T1_from_GRE"]

    with pytest.raises(InputError):                           # no QSM and nuclei yet: shown, then raised
        _click(ui.suggestTargetButton)
    assert env.calls["errors"] and p.targets is None

    p.qsmVolume = mrml.add_volume(env.scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=t_gre)
    p.segmentation = mrml.add_segmentation(env.scene, _nuclei_labelmap(patient), NUCLEI, "Nuclei",
                                           parent_transform=t_gre)
    env.calls["errors"].clear()
    _click(ui.suggestTargetButton)                            # the risk map, then the plan, in workers
    assert env.widget._task is not None and env.widget._task.name == "risk map"
    _poll_until_idle(env)
    assert not env.calls["errors"], env.calls["errors"]
    plan = planner.side_plans["left"]
    target = mrml.fiducials_to_dict(p.targets)["target_L"]
    np.testing.assert_allclose(target, plan.target_ras)
    assert p.trajectory.GetName() == "Trajectory_L" and p.suggestionsTable.GetName() == "Suggestions_L"
    assert plan.plan["statement"] in ui.statusLabel.text

    # the surgeon sorts the suggestions by risk and picks the last row shown (the standard trajectory)
    view = ui.suggestionsTableView
    assert view.node is p.suggestionsTable and not view.header_in_model()
    view.sort_by("risk")
    view.selected = view.visible_rows() - 1
    rows = mrml.table_to_rows(p.suggestionsTable)
    picked = rows[view.order[view.selected]]
    _click(ui.useSuggestionButton)
    _poll_until_idle(env)
    entry = mrml.fiducials_to_dict(p.entries)["entry_L"]
    np.testing.assert_allclose(entry, [picked["R"], picked["A"], picked["S"]])
    np.testing.assert_allclose(mrml.fiducials_to_dict(p.targets)["target_L"], target)   # target kept
    assert planner.side_plans["left"].chosen.label == "surgeon's entry"
    view.selected = -1
    with pytest.raises(ValueError, match="select a row"):
        _click(ui.useSuggestionButton)
    assert "select a row" in env.calls["errors"].pop()

    _click(ui.profileButton)
    assert env.calls["charts"] and env.calls["charts"][-1].GetName() == "Profile_L chart"
    _click(ui.probeEyeButton)
    n = (entry - target) / np.linalg.norm(entry - target)
    np.testing.assert_allclose(mrml.np_matrix(env.red.GetSliceToRAS())[:3, 2], n, atol=1e-6)

    p.side = "right"
    _click(ui.suggestTargetButton)                            # the risk map is cached: the plan at once
    assert env.widget._task.name == "right trajectory"
    _poll_until_idle(env)
    assert set(planner.trajectories()) == {"L", "R"}

    # the surgeon drags the right target 1 mm up and re-plans: scored through the moved point, not moved
    moved = planner.side_plans["right"].target_ras + [0.0, 0.0, 1.0]
    mrml.set_control_point(p.targets, "target_R", moved)
    _click(ui.planTrajectoryButton)
    _poll_until_idle(env)
    np.testing.assert_allclose(planner.side_plans["right"].target_ras, moved, atol=1e-6)
    assert "right" in ui.statusLabel.text

    planner.set_frame(p.ctVolume, patient.transforms["xyz_from_ct"])
    _click(ui.coordinatesButton)
    rows = mrml.table_to_rows(p.coordinatesTable)
    assert [(r["side"], r["point"]) for r in rows][3:] == [("left", "target"), ("left", "entry"),
                                                           ("right", "target"), ("right", "entry")]
    assert np.isfinite(rows[3]["X_Leksell_mm"]) and ui.coordinatesTableView.node is p.coordinatesTable

    p.outputDirectory = env.tmp / "out"
    _click(ui.saveButton)
    assert not env.calls["errors"], env.calls["errors"]
    out = env.tmp / "out"
    import json
    doc = json.loads((out / "plan.json").read_text())
    assert doc["schema"].startswith("qsmplanner-plan/") and set(doc["sides"]) == {"left", "right"}
    assert (out / "plan.csv").read_text().splitlines()[0].startswith("side,point,R_RAS_mm")
    assert "X (Leksell mm)" in (out / "report.html").read_text()
    back = mrml.load_mrb(out / "QSMPlanner.mrb")
    assert mrml.node_by_name(back, "Trajectory_R", "vtkMRMLMarkupsLineNode") is not None

    _click(ui.qcOverlayButton)
    assert env.calls["layers"][-1]["foreground"] is p.qsmVolume


def test_stages_run_in_worker_processes_polled_by_the_timer_and_cancelled(env):
    w, ui = env.widget, env.ui
    planner = w.logic.planner()
    done = []
    w._start(lambda: planner.digital_patient_task(seed=0, small=True), done.append)
    assert w._timer.active and ui.cancelButton.enabled is True and ui.runQSMButton.enabled is False
    t0 = time.monotonic()
    while w._task.fraction <= 0.0 and time.monotonic() - t0 < 60:
        w._timer.timeout.emit()
        time.sleep(0.05)
    assert 0 < ui.progressBar.value < 100 and "digital patient:" in ui.statusLabel.text
    _click(ui.cancelButton)
    _poll_until_idle(env)
    assert "cancelled" in ui.statusLabel.text and not done and w._task is None
    assert ui.runQSMButton.enabled is True and not w._timer.active

    patient = synthetic_patient()
    nodes = planner.load_patient_nodes(patient)
    env.p.magnitudeVolume, env.p.phaseVolume = nodes["gre_magnitude"][0], nodes["gre_phase"][0]
    env.p.backgroundRemoval, env.p.inversion = "vsharp", "tkd"
    _click(ui.runQSMButton)
    _poll_until_idle(env)
    assert env.p.qsmVolume is not None and env.p.qsmVolume.GetAttribute("QSMPlanner.Method") == "vsharp+tkd"
    assert "done" in ui.statusLabel.text

    # a stage that fails in its worker: reported with its message, the panel stays usable
    env.p.echoTimesMs = "4, 12, 8, 16"
    _click(ui.runQSMButton)
    _poll_until_idle(env)
    assert any("QSM failed" in e and "echo" in e for e in env.calls["errors"]) and ui.runQSMButton.enabled is True


def test_closing_the_scene_cancels_and_forgets(env):
    planner = env.widget.logic.planner()
    planner.side_plans["left"] = object()
    w = env.widget
    w._start(lambda: planner.digital_patient_task(seed=0, small=True), None)
    task = w._task
    env.scene.Clear(0)                                        # File > Close scene
    assert planner.side_plans == {} and planner.normalization is None
    while not task.step():
        time.sleep(0.05)
    assert task.cancelled


def test_run_buttons_start_tasks_from_the_selected_nodes(env):
    patient = synthetic_patient()
    planner = env.widget.logic.planner()
    nodes = planner.load_patient_nodes(patient, known_transforms=False)
    p = env.p
    p.magnitudeVolume, p.phaseVolume, p.t1Volume = nodes["gre_magnitude"][0], nodes["gre_phase"][0], nodes["T1"]
    started = []
    real_start = env.widget._start

    def record(makeTask, onDone=None):
        started.append(makeTask())
    env.widget._start = record
    _click(env.ui.runQSMButton)
    _click(env.ui.registerGREButton)
    p.ctVolume = nodes["CT"]
    _click(env.ui.registerCTButton)
    _click(env.ui.frameButton)
    env.widget._start = real_start
    assert [t.name for t in started] == ["QSM", "registration T1_from_GRE", "registration T1_from_CT",
                                         "frame registration"]
    assert [t.stage for t in started] == ["qsm", "register_gre_to_t1", "register_to_t1", "register_frame"]
    # nothing ran yet: no transform node, the moving volumes are untouched
    assert planner.node("T1_from_GRE") is None and p.magnitudeVolume.GetParentTransformNode() is None


def test_read_gre_folder_button(env):
    """A BIDS folder written by io becomes echo nodes with the acquisition's geometry."""
    w, ui = env.widget, env.ui
    env.qt.chosen_directory = ""
    _click(ui.loadGREButton)                                  # dialog cancelled: nothing happens
    assert w._task is None
    patient = synthetic_patient()
    from QSMPlannerLib import io
    bids = env.tmp / "bids"
    io.write_gre_bids(patient.gre, bids, "syn")
    env.qt.chosen_directory = str(bids)
    _click(ui.loadGREButton)
    _poll_until_idle(env)
    assert not env.calls["errors"], env.calls["errors"]
    mag = env.p.magnitudeVolume
    np.testing.assert_allclose(mrml.ras_from_ijk_of(mag), patient.gre.ras_from_ijk, atol=1e-4)
    gre = w.logic.planner().gre_from_nodes(mag, env.p.phaseVolume)
    np.testing.assert_allclose(gre.te_s, patient.gre.te_s, rtol=1e-6)
    np.testing.assert_allclose(gre.phase_rad, patient.gre.phase_rad, atol=2e-3)


@pytest.mark.slow
@pytest.mark.main_leg  # once per make test: the Slicer legs run the same stages in the panel tests
def test_the_modules_self_test_runs_here(env):
    """The self test Slicer runs (Reload and Test): sample data registration through Slicer's SampleData
    (skipped where it is absent), then the whole flow with every long stage in a worker process, MNI
    normalisation included, checked against the digital patient's truth, saved and read back."""
    test = env.module.QSMPlannerTest()
    try:
        import SampleData  # noqa: F401  (a Slicer application module: not in slicer-core)
    except ImportError:
        pass
    else:
        test.setUp()
        test.test_SampleDataRegistered()
    test.setUp()
    test.test_WholeFlowOnDigitalPatient()
    shown = type(test).__mro__[1].shown
    assert shown[-1] == "Test passed" and any("MNI normalization" in m for m in shown)
