"""The module file (QSMPlanner.py) driven headless: the Slicer application pieces it touches (qt.QTimer,
ScriptedLoadableModule bases, parameterNodeWrapper, slicer.app, slicer.modules, GUI dialogs) are replaced by
small fakes, the panel's widgets by mocks named after the .ui, and the MRML scene and PlannerLogic are real.
Buttons are "clicked" through the connections the widget made; the results are checked on the nodes."""
import importlib.util
import sys
import time
import types
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

from QSMPlannerLib.scene import mrml  # noqa: E402
from QSMPlannerLib.scene.logic import StageTask  # noqa: E402

MODULE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_module_logic import NUCLEI, _nuclei_labelmap, synthetic_patient  # noqa: E402


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

    class ScriptedLoadableModuleTest:
        pass

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
        ns.suggestionsTableView.currentIndex.return_value.row.return_value = 0
        return ns

    @contextmanager
    def tryWithErrorDisplay(message="", waitCursor=False):
        try:
            yield
        except Exception as exc:
            calls["errors"].append(f"{message} {exc}")

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


def test_module_metadata_and_parameter_defaults(env):
    m = env.module
    parent = SimpleNamespace()
    m.QSMPlanner(parent)
    assert parent.title == "QSMPlanner" and parent.categories == ["Neurosurgery"]
    assert "CIT168" in parent.acknowledgementText and "ICBM152" in parent.acknowledgementText
    p = env.p
    assert p.gui is env.ui                                    # connectGui bound the panel
    assert (p.backgroundRemoval, p.inversion, p.side, p.mounting) == ("pdf", "tv", "left", "lateral-right")
    assert p.fieldStrengthT == 3.0 and p.marginMm == 2.0 and p.hardenTransforms is False
    assert p.electrode == "medtronic_3389"
    assert env.module.QSMPlannerLogic.missingRequirements() == []
    assert env.widget.logic.ensureDependencies(ask=True) and env.calls["pip"] == []


def test_panel_flow_from_nodes_to_saved_plan(env):
    patient = synthetic_patient()
    planner = env.widget.logic.planner()
    assert planner.scene is env.scene
    nodes = planner.load_patient_nodes(patient, known_transforms=True)
    p, ui = env.p, env.ui
    p.magnitudeVolume, p.phaseVolume = nodes["gre_magnitude"][0], nodes["gre_phase"][0]
    p.t1Volume, p.ctVolume, p.landmarks = nodes["T1"], nodes["CT"], nodes["AC-PC-MS"]
    t_gre = nodes["T1_from_GRE"]

    _click(ui.suggestTargetButton)                            # no segmentation yet: an error, no crash
    assert env.calls["errors"] and p.targets is None

    p.qsmVolume = mrml.add_volume(env.scene, patient.truth["chi_ppm"], "QSM", kind="qsm", parent_transform=t_gre)
    p.segmentation = mrml.add_segmentation(env.scene, _nuclei_labelmap(patient), NUCLEI, "Nuclei",
                                           parent_transform=t_gre)
    env.calls["errors"].clear()
    _click(ui.suggestTargetButton)
    assert not env.calls["errors"]
    target = mrml.fiducials_to_dict(p.targets)["target_L"]
    assert np.linalg.norm(target - patient.centres_t1["STN_L"]) < 0.7
    assert p.trajectory.GetName() == "Trajectory_L"

    _click(ui.rankEntriesButton)
    ui.suggestionsTableView.setMRMLTableNode.assert_called_with(p.suggestionsTable)
    best = mrml.table_to_rows(p.suggestionsTable)[0]
    _click(ui.useSuggestionButton)
    entry = mrml.fiducials_to_dict(p.entries)["entry_L"]
    np.testing.assert_allclose(entry, [best["R"], best["A"], best["S"]])
    np.testing.assert_allclose(mrml.fiducials_to_dict(p.targets)["target_L"], target)   # target kept

    _click(ui.profileButton)
    assert env.calls["charts"] and env.calls["charts"][-1].GetName() == "Profile_L chart"

    _click(ui.probeEyeButton)
    n = (entry - target) / np.linalg.norm(entry - target)
    np.testing.assert_allclose(mrml.np_matrix(env.red.GetSliceToRAS())[:3, 2], n, atol=1e-6)

    p.side = "right"
    _click(ui.suggestTargetButton)
    assert set(planner.trajectories()) == {"L", "R"}

    planner.set_frame(p.ctVolume, patient.transforms["xyz_from_ct"])
    _click(ui.coordinatesButton)
    rows = {r["point"]: r for r in mrml.table_to_rows(p.coordinatesTable)}
    assert {"AC", "PC", "MS", "target_L", "entry_L", "target_R", "entry_R"} <= set(rows)
    assert "X" in rows["target_L"]

    p.outputDirectory = env.tmp / "out"
    _click(ui.saveButton)
    assert not env.calls["errors"], env.calls["errors"]
    out = env.tmp / "out"
    assert (out / "coordinates.tsv").read_text().splitlines()[0].startswith("point\tR\tA\tS")
    assert (out / "plan.json").is_file()
    back = mrml.load_mrb(out / "QSMPlanner.mrb")
    assert mrml.node_by_name(back, "Trajectory_R", "vtkMRMLMarkupsLineNode") is not None

    _click(ui.qcOverlayButton)
    assert env.calls["layers"][-1]["foreground"] is p.qsmVolume


def test_background_stage_polled_by_the_timer_and_cancelled(env):
    w, ui = env.widget, env.ui
    done = []

    def slow(progress):
        for i in range(400):
            progress.update(i / 400, f"step {i}")
            time.sleep(0.005)
        return 7

    w._start(lambda: StageTask("slow", slow, lambda r: r * 6), done.append)
    assert w._timer.active and ui.cancelButton.enabled is True and ui.runQSMButton.enabled is False
    time.sleep(0.1)
    w._timer.timeout.emit()
    assert 0 < ui.progressBar.value < 100 and "slow: step" in ui.statusLabel.text
    _click(ui.cancelButton)
    w._task.wait(5)
    w._timer.timeout.emit()
    assert "cancelled" in ui.statusLabel.text and not done and w._task is None
    assert ui.runQSMButton.enabled is True and not w._timer.active

    w._start(lambda: StageTask("quick", lambda p: 7, lambda r: r * 6), done.append)
    w._task.wait(5)
    w._timer.timeout.emit()
    assert done == [42] and "done" in ui.statusLabel.text

    # a stage whose package is missing or fails: reported, the panel stays usable
    def broken(progress):
        raise RuntimeError("no data")
    w._start(lambda: StageTask("broken", broken, lambda r: r), done.append)
    w._task.wait(5)
    w._timer.timeout.emit()
    assert any("broken failed" in e for e in env.calls["errors"]) and ui.runQSMButton.enabled is True


def test_run_buttons_start_tasks_from_the_selected_nodes(env):
    patient = synthetic_patient()
    planner = env.widget.logic.planner()
    nodes = planner.load_patient_nodes(patient, known_transforms=False)
    p = env.p
    p.magnitudeVolume, p.phaseVolume, p.t1Volume = nodes["gre_magnitude"][0], nodes["gre_phase"][0], nodes["T1"]
    started = []
    real_start = env.widget._start

    def record(makeTask, onDone=None):
        task = makeTask()
        started.append(task)
    env.widget._start = record
    _click(env.ui.runQSMButton)
    _click(env.ui.registerGREButton)
    p.ctVolume = nodes["CT"]
    _click(env.ui.registerCTButton)
    env.widget._start = real_start
    assert [t.name for t in started] == ["QSM", "registration T1_from_GRE", "registration T1_from_CT"]
    # nothing ran yet: no transform node, the moving volumes are untouched
    assert planner.node("T1_from_GRE") is None and p.magnitudeVolume.GetParentTransformNode() is None


def test_read_gre_folder_button(env):
    """A BIDS folder written by io becomes echo nodes with the acquisition's geometry; without the io
    reader the failure is reported and the panel stays usable."""
    w, ui = env.widget, env.ui
    env.qt.chosen_directory = ""
    _click(ui.loadGREButton)                                  # dialog cancelled: nothing happens
    assert w._task is None
    patient = synthetic_patient()
    io = pytest.importorskip("QSMPlannerLib.io")
    bids = env.tmp / "bids"
    env.qt.chosen_directory = str(bids)
    if hasattr(io, "write_gre_bids") and hasattr(io, "load_gre"):
        io.write_gre_bids(patient.gre, bids, "syn")
    _click(ui.loadGREButton)
    w._task.wait(30)
    w._timer.timeout.emit()
    if not (hasattr(io, "write_gre_bids") and hasattr(io, "load_gre")):
        assert any("read GRE failed" in e for e in env.calls["errors"])
        return
    assert not env.calls["errors"], env.calls["errors"]
    mag = env.p.magnitudeVolume
    np.testing.assert_allclose(mrml.ras_from_ijk_of(mag), patient.gre.ras_from_ijk, atol=1e-4)
    gre = w.logic.planner().gre_from_nodes(mag, env.p.phaseVolume)
    np.testing.assert_allclose(gre.te_s, patient.gre.te_s, rtol=1e-6)
    np.testing.assert_allclose(gre.phase_rad, patient.gre.phase_rad, atol=2e-3)
