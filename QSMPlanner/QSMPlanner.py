"""QSMPlanner — 3D Slicer module: QSM-based DBS planning, from multi-echo GRE to Leksell frame coordinates.

Thin by design: the Module (metadata, sample data), a parameter node class, a Widget that binds the
``Resources/UI/QSMPlanner.ui`` panel and runs stages in worker processes, a Logic that hands the panel's
settings and nodes to ``QSMPlannerLib.panel.logic.PlannerLogic`` (the panel's face on the workflow the
``qsmplanner`` command runs, tested headless), and a self test.
"""
import importlib.util
import logging
import os
import pathlib
import shutil
from typing import Annotated, Optional

import qt

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsLineNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
POLL_INTERVAL_MS = 50   # a worker process is polled this often; each poll does a bounded piece of work
REQUIREMENTS = os.path.join(MODULE_DIR, "Resources", "requirements.txt")
SAMPLE_CATEGORY = "QSMPlanner"
SAMPLE_NAME = "QSMPlannerDigitalPatient"

# Python import name of each distribution in Resources/requirements.txt (when they differ).
IMPORT_NAMES = {"scikit-image": "skimage", "pynrrd": "nrrd", "SimpleITK": "SimpleITK"}


#
# QSMPlanner
#
class QSMPlanner(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "QSMPlanner"
        self.parent.categories = ["Neurosurgery"]
        self.parent.dependencies = []
        self.parent.contributors = ["QSMPlanner contributors"]
        self.parent.helpText = """
Plans deep brain stimulation trajectories from quantitative susceptibility mapping (QSM).
Work top to bottom: <b>Inputs</b> (multi-echo GRE magnitude and phase, planning T1, frame CT — or load the
built-in digital patient) → <b>QSM</b> → <b>Registration</b> (GRE and CT to the T1) → <b>Segmentation</b>
(STN, SN, RN, GPi, GPe; edit in Segment Editor) → <b>Landmarks</b> (AC, PC, mid-sagittal point) → <b>Trajectory</b>
(target kind per side: STN or GPi from the QSM, VIM from AC-PC; ranked entries, distance-to-vessel profile,
probe's-eye view, electrode) → <b>Frame and export</b>
(Leksell frame registration with its FRE, mounting, coordinate table, report and scene).
All coordinates in the scene are RAS mm of the planning T1; Leksell X, Y, Z appear only in the table.
Research software, not cleared for clinical use: check every frame coordinate independently.
"""
        self.parent.acknowledgementText = """
Uses the MNI ICBM152 2009 nonlinear symmetric template (Copyright (C) 1993-2009 Louis Collins, McConnell
Brain Imaging Centre, Montreal Neurological Institute, McGill University; V.S. Fonov, A.C. Evans, R.C.
McKinstry, C.R. Almli, D.L. Collins, NeuroImage 47:S102, 2009; V.S. Fonov et al., NeuroImage 54(1):313-327,
2011) and the CIT168 subcortical atlas (W.M. Pauli, A.N. Nili, J.M. Tyszka, A high-resolution probabilistic
in vivo atlas of human subcortical brain nuclei, Scientific Data 5:180063, 2018, CC BY 4.0).
See Resources/Atlases/LICENSE.md.
"""
        # Sample data is registered once the application has started.
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: the digital patient is generated, not downloaded.
#
def registerSampleData():
    import SampleData
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=["qsmplanner://digital-patient/seed-0"],
        fileNames=["QSMPlannerDigitalPatient"],
        nodeNames=["QSMPlannerDigitalPatient"],
        thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "QSMPlanner.png"),
        customDownloader=loadDigitalPatient,
    )


def loadDigitalPatient(source=None, small=True, seed=0):
    """SampleData loader (called with the sample data source): generate the digital patient (seconds with
    ``small``) and add it as nodes — GRE echoes, T1, frame CT, AC/PC/MS, true labels (hidden). Returns
    the nodes (T1 first)."""
    logic = QSMPlannerLogic()
    if not logic.ensureDependencies(ask=True):
        return []
    planner = logic.planner()
    with slicer.util.tryWithErrorDisplay("Could not create the digital patient.", waitCursor=True):
        nodes = planner.run_in_process(planner.digital_patient_task(seed=seed, small=small),
                                       on_poll=slicer.app.processEvents)
        slicer.util.setSliceViewerLayers(background=nodes["T1"], fit=True)
        flat = [nodes["T1"]] + [n for k, v in nodes.items() if k != "T1"
                                for n in (v if isinstance(v, list) else [v])]
        return [n for n in flat if n is not None]
    return []


#
# Parameter node
#
@parameterNodeWrapper
class QSMPlannerParameterNode:
    """Everything the panel shows. Node references are MRML nodes; coordinates live in the nodes."""
    # Inputs
    magnitudeVolume: vtkMRMLScalarVolumeNode
    phaseVolume: vtkMRMLScalarVolumeNode
    echoTimesMs: str = ""
    fieldStrengthT: Annotated[float, WithinRange(0.5, 11.7)] = 3.0
    t1Volume: vtkMRMLScalarVolumeNode
    ctVolume: vtkMRMLScalarVolumeNode
    # QSM
    backgroundRemoval: Annotated[str, Choice(["vsharp", "pdf", "lbv", "resharp"])] = "pdf"
    inversion: Annotated[str, Choice(["tv", "tkd"])] = "tv"
    qsmVolume: vtkMRMLScalarVolumeNode
    # Registration
    greTransform: vtkMRMLLinearTransformNode
    ctTransform: vtkMRMLLinearTransformNode
    hardenTransforms: bool = False
    # Segmentation
    priorLabels: vtkMRMLLabelMapVolumeNode
    nucleusSeeds: vtkMRMLMarkupsFiducialNode
    segmentation: vtkMRMLSegmentationNode
    # Landmarks
    landmarks: vtkMRMLMarkupsFiducialNode
    # Trajectory
    side: Annotated[str, Choice(["left", "right"])] = "left"
    targetKindLeft: Annotated[str, Choice(["stn", "gpi", "vim"])] = "stn"
    targetKindRight: Annotated[str, Choice(["stn", "gpi", "vim"])] = "stn"
    marginMm: Annotated[float, WithinRange(0.0, 10.0)] = 3.0
    electrode: Annotated[str, Choice(["medtronic_3389", "medtronic_3387", "bsci_vercise_directional"])] = \
        "medtronic_3389"
    targets: vtkMRMLMarkupsFiducialNode
    entries: vtkMRMLMarkupsFiducialNode
    trajectory: vtkMRMLMarkupsLineNode
    suggestionsTable: vtkMRMLTableNode
    # Frame and export
    mounting: Annotated[str, Choice(["lateral-right", "lateral-left", "sagittal-anterior",
                                     "sagittal-posterior"])] = "lateral-right"
    coordinatesTable: vtkMRMLTableNode
    outputDirectory: pathlib.Path


#
# Widget
#
class QSMPlannerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the panel to the parameter node and runs stages without freezing the application."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._onDone = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/QSMPlanner.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = QSMPlannerLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onPollTask)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.sampleDataButton.clicked.connect(self.onLoadSampleData)
        self.ui.dicomButton.clicked.connect(self.onOpenDICOM)
        self.ui.loadGREButton.clicked.connect(self.onLoadGRE)
        self.ui.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        self.ui.runQSMButton.clicked.connect(self.onRunQSM)
        self.ui.registerGREButton.clicked.connect(self.onRegisterGRE)
        self.ui.registerCTButton.clicked.connect(self.onRegisterCT)
        self.ui.qcOverlayButton.clicked.connect(self.onQCOverlay)
        self.ui.runSegmentationButton.clicked.connect(self.onRunSegmentation)
        self.ui.editSegmentationButton.clicked.connect(self.onEditSegmentation)
        self.ui.placeLandmarksButton.clicked.connect(self.onPlaceLandmarks)
        self.ui.suggestTargetButton.clicked.connect(self.onPlanSide)
        self.ui.useSuggestionButton.clicked.connect(self.onUseSuggestion)
        self.ui.planTrajectoryButton.clicked.connect(self.onPlanTrajectory)
        self.ui.profileButton.clicked.connect(self.onDistanceProfile)
        self.ui.probeEyeButton.clicked.connect(self.onProbeEye)
        self.ui.probeDepthSlider.valueChanged.connect(self.onProbeEye)
        self.ui.frameButton.clicked.connect(self.onRegisterFrame)
        self.ui.coordinatesButton.clicked.connect(self.onUpdateCoordinates)
        self.ui.saveButton.clicked.connect(self.onSave)
        self.ui.cancelButton.clicked.connect(self.onCancel)

        self.initializeParameterNode()
        self._setBusy(False)

    def cleanup(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self._task is not None:
            self._task.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None:
            self._task.cancel()
        self.logic.reset()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[QSMPlannerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    # ---- running stages -------------------------------------------------------------------------
    def _start(self, makeTask, onDone=None) -> None:
        """Build a stage (main thread: reads the nodes), run it in a worker process polled by the timer
        (the event loop stays free), and call ``onDone(nodes)`` on the main thread when it has finished."""
        if self._task is not None:
            slicer.util.warningDisplay("A computation is already running; cancel it or wait.")
            return
        if not self.logic.ensureDependencies(ask=True):
            return
        self.logic.applySettings(self._parameterNode)
        with slicer.util.tryWithErrorDisplay("Could not start the computation.", waitCursor=True):
            task = makeTask()
            self._task, self._onDone = task, onDone
            self.ui.statusLabel.text = f"{task.name}: starting"
            self.ui.progressBar.value = 0
            self._setBusy(True)
            task.start(background=True)
            self._timer.start()

    def onPollTask(self) -> None:
        task = self._task
        if task is None:
            self._timer.stop()
            return
        done = task.step()
        self.ui.progressBar.value = int(round(100 * task.fraction))
        self.ui.statusLabel.text = f"{task.name}: {task.message}"
        if not done:
            return
        self._timer.stop()
        self._task = None
        self._setBusy(False)
        if task.cancelled:
            self.ui.statusLabel.text = f"{task.name}: cancelled"
            return
        try:
            with slicer.util.WaitCursor():
                nodes = task.finish()
        except Exception as exc:
            logging.error(task.trace or str(exc))
            self.ui.statusLabel.text = f"{task.name}: failed"
            slicer.util.errorDisplay(f"{task.name} failed: {exc}", detailedText=task.trace or None)
            return
        self.ui.statusLabel.text = f"{task.name}: done in {task.elapsed_s:.1f} s"
        self.ui.progressBar.value = 100
        self._logMessages()
        if self._onDone is not None:
            self._onDone(nodes)

    def _logMessages(self) -> None:
        planner = self.logic.planner()
        for message in planner.messages:
            logging.info(message)
        planner.messages.clear()

    def onCancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self.ui.statusLabel.text = f"{self._task.name}: cancelling…"

    def _setBusy(self, busy: bool) -> None:
        self.ui.cancelButton.enabled = busy
        self.ui.progressBar.visible = busy or self.ui.progressBar.value > 0
        for button in (self.ui.sampleDataButton, self.ui.loadGREButton, self.ui.runQSMButton, self.ui.registerGREButton,
                       self.ui.registerCTButton, self.ui.runSegmentationButton, self.ui.suggestTargetButton,
                       self.ui.useSuggestionButton, self.ui.planTrajectoryButton, self.ui.frameButton,
                       self.ui.saveButton):
            button.enabled = not busy

    # ---- Inputs ---------------------------------------------------------------------------------
    def onLoadSampleData(self) -> None:
        planner = self.logic.planner()

        def done(nodes):
            p = self._parameterNode
            p.magnitudeVolume = nodes["gre_magnitude"][0]
            p.phaseVolume = nodes["gre_phase"][0]
            p.t1Volume = nodes["T1"]
            p.ctVolume = nodes.get("CT")
            p.landmarks = nodes.get("AC-PC-MS")
            slicer.util.setSliceViewerLayers(background=nodes["T1"], fit=True)
        self._start(lambda: planner.digital_patient_task(seed=0, small=self.ui.smallSampleCheckBox.checked), done)

    def onLoadGRE(self) -> None:
        """Read a multi-echo GRE (BIDS folder, anat folder or DICOM series folder) into echo volumes."""
        directory = qt.QFileDialog.getExistingDirectory(None, "Multi-echo GRE: BIDS, anat or DICOM folder")
        if not directory:
            return
        p = self._parameterNode
        planner = self.logic.planner()

        def done(nodes):
            p.magnitudeVolume, p.phaseVolume = nodes["magnitude"][0], nodes["phase"][0]
            slicer.util.setSliceViewerLayers(background=nodes["magnitude"][0], fit=True)
        self._start(lambda: planner.gre_files_task(directory, te_ms=self._echoTimes(), b0_tesla=p.fieldStrengthT),
                    done)

    def onOpenDICOM(self) -> None:
        slicer.util.selectModule("DICOM")

    def onInstallDependencies(self) -> None:
        self.logic.ensureDependencies(ask=True, force=True)

    def _echoTimes(self):
        text = self._parameterNode.echoTimesMs.strip()
        if not text:
            return None
        try:
            return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"echo times must be numbers in ms separated by commas, got {text!r}")

    # ---- QSM ------------------------------------------------------------------------------------
    def onRunQSM(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()

        def done(node):
            p.qsmVolume = node
            slicer.util.setSliceViewerLayers(background=node, fit=True)

        def makeTask():
            # The field strength typed in the panel applies to volumes that do not carry their own.
            tagged = p.magnitudeVolume is not None and p.magnitudeVolume.GetAttribute("QSMPlanner.B0_T")
            return planner.qsm_task(p.magnitudeVolume, p.phaseVolume, self._echoTimes(),
                                    None if tagged else p.fieldStrengthT)
        self._start(makeTask, done)

    # ---- Registration ---------------------------------------------------------------------------
    def onRegisterGRE(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()

        def makeTask():
            moved = [n for n in planner.gre_nodes_for(p.magnitudeVolume) if n is not p.magnitudeVolume]
            moved += [n for n in (p.qsmVolume, p.segmentation) if n is not None]
            return planner.registration_task(p.t1Volume, p.magnitudeVolume, "T1_from_GRE", moved,
                                             harden=p.hardenTransforms)

        def done(node):
            p.greTransform = node
            self.onQCOverlay()
        self._start(makeTask, done)

    def onRegisterCT(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()

        def done(node):
            p.ctTransform = node
        self._start(lambda: planner.registration_task(p.t1Volume, p.ctVolume, "T1_from_CT",
                                                      harden=p.hardenTransforms), done)

    def onQCOverlay(self) -> None:
        p = self._parameterNode
        moving = p.qsmVolume or p.magnitudeVolume
        slicer.util.setSliceViewerLayers(background=p.t1Volume, foreground=moving, foregroundOpacity=0.5)

    # ---- Segmentation ---------------------------------------------------------------------------
    def onRunSegmentation(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()

        def done(node):
            p.segmentation = node
        self._start(lambda: planner.segmentation_task(p.qsmVolume, p.t1Volume, p.priorLabels,
                                                      seeds_node=p.nucleusSeeds), done)

    def onEditSegmentation(self) -> None:
        """Segment Editor on the nuclei: the plan reads the segmentation node, so edits count."""
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        if p.segmentation is not None:
            editor.setSegmentationNode(p.segmentation)
        if p.qsmVolume is not None:
            editor.setSourceVolumeNode(p.qsmVolume)

    # ---- Landmarks ------------------------------------------------------------------------------
    def onPlaceLandmarks(self) -> None:
        """Place AC, PC, MS (in this order) in the slice views."""
        p = self._parameterNode
        if p.landmarks is None:
            p.landmarks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "AC-PC-MS")
            p.landmarks.CreateDefaultDisplayNodes()
        node = p.landmarks
        have = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
        missing = [k for k in ("AC", "PC", "MS") if k not in have]
        if not missing:
            slicer.util.infoDisplay("AC, PC and MS are placed; drag them to adjust.")
            return
        node.SetName("AC-PC-MS")
        node.SetControlPointLabelFormat(missing[0])  # the next placed point is labelled AC, PC or MS
        slicer.modules.markups.logic().SetActiveList(node)
        slicer.modules.markups.logic().StartPlaceMode(False)
        self.ui.statusLabel.text = f"Click to place {missing[0]}"

    # ---- Trajectory -----------------------------------------------------------------------------
    def _planArgs(self) -> tuple:
        p = self._parameterNode
        return p.qsmVolume, p.segmentation, p.t1Volume, p.ctVolume

    def _withRiskMap(self, then) -> None:
        """Run ``then()`` once the risk map of the current nodes exists (computed in a worker if needed)."""
        planner = self.logic.planner()
        self.logic.applySettings(self._parameterNode)
        qsm, seg, t1, ct = self._planArgs()
        with slicer.util.tryWithErrorDisplay("Could not plan.", waitCursor=True):
            ready = planner.has_risk_map(qsm, seg, t1)
        if ready:
            then()
        else:
            self._start(lambda: planner.risk_task(qsm, seg, t1), lambda risk: then())

    def onPlanSide(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()
        self._withRiskMap(lambda: self._start(lambda: planner.plan_side_task(p.side, *self._planArgs()),
                                              self._showPlan))

    def _selectedSuggestionRow(self):
        """The table row under the selection of the suggestions view (sorting and header row accounted for)."""
        view = self.ui.suggestionsTableView
        index = view.currentIndex()
        if not index.isValid():
            return None
        row = view.tableModel().mrmlTableRowIndex(view.sortFilterProxyModel().mapToSource(index))
        return None if row < 0 else row

    def onUseSuggestion(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()
        table = p.suggestionsTable
        with slicer.util.tryWithErrorDisplay("Could not use the selected entry.", waitCursor=True):
            row = self._selectedSuggestionRow()
            if table is None or row is None:
                raise ValueError("select a row of the suggestions table first")
            from QSMPlannerLib.scene import mrml
            rows = mrml.table_to_rows(table)
            entry = [rows[row]["R"], rows[row]["A"], rows[row]["S"]]
        self._start(lambda: planner.use_entry_task(p.side, entry, *self._planArgs()), self._showPlan)

    def onPlanTrajectory(self) -> None:
        """Re-plan the sides whose target or entry point was dragged (scored as the surgeon's trajectory)."""
        planner = self.logic.planner()
        with slicer.util.tryWithErrorDisplay("Could not update the trajectory.", waitCursor=True):
            moved = planner.moved_sides()
        if not moved:
            self.ui.statusLabel.text = "re-planned: nothing moved"
            return

        def replan(sides):
            side, rest = sides[0], sides[1:]
            target, entry = moved[side]

            def done(nodes):
                self._showPlan(nodes)
                if rest:
                    replan(rest)
                else:
                    self.ui.statusLabel.text = f"re-planned: {', '.join(moved)}"
            self._start(lambda: planner.plan_side_task(side, *self._planArgs(), target_ras=target, entry_ras=entry),
                        done)
        replan(list(moved))

    def _showPlan(self, nodes) -> None:
        p = self._parameterNode
        p.targets, p.entries, p.trajectory = nodes["targets"], nodes["entries"], nodes["line"]
        if nodes.get("suggestions") is not None:
            p.suggestionsTable = nodes["suggestions"]
            self.ui.suggestionsTableView.setMRMLTableNode(nodes["suggestions"])
        self.ui.statusLabel.text = nodes["plan"].plan.get("statement", "")

    def onDistanceProfile(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Could not compute the distance profile.", waitCursor=True):
            table, chart = self.logic.planner().distance_profile(p.side)
            if chart is not None:
                slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onProbeEye(self, *args) -> None:
        p = self._parameterNode
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        with slicer.util.tryWithErrorDisplay("Could not set the probe's-eye view.", waitCursor=False):
            self.logic.planner().probe_eye_slice(sliceNode, p.side, float(self.ui.probeDepthSlider.value))

    # ---- Frame and export -----------------------------------------------------------------------
    def onRegisterFrame(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()

        def done(frame):
            self.ui.freLabel.text = (f"FRE {frame.fre_mm:.2f} mm on {frame.n_points} fiducial points "
                                     f"({frame.n_rejected} rejected)")
            if planner.side_plans:
                self.onUpdateCoordinates()
        self._start(lambda: planner.frame_task(p.ctVolume), done)

    def onUpdateCoordinates(self) -> None:
        p = self._parameterNode
        planner = self.logic.planner()
        with slicer.util.tryWithErrorDisplay("Could not compute the coordinates.", waitCursor=True):
            self.logic.applySettings(p)
            planner.sync_with_points(*self._planArgs())
            table = planner.coordinates_table(p.ctVolume, p.qsmVolume)
            p.coordinatesTable = table
            self.ui.coordinatesTableView.setMRMLTableNode(table)

    def onSave(self) -> None:
        p = self._parameterNode
        if not p.outputDirectory or str(p.outputDirectory) in ("", "."):
            slicer.util.errorDisplay("Choose an output folder first.")
            return
        with slicer.util.tryWithErrorDisplay("Could not save.", waitCursor=True):
            self.logic.applySettings(p)
            paths = self.logic.planner().save(pathlib.Path(p.outputDirectory), *self._planArgs())
            self.ui.statusLabel.text = "Saved: " + ", ".join(pathlib.Path(x).name for x in paths.values())


def dicomFilesOf(node) -> list:
    """The files of Slicer's DICOM database behind a volume its DICOM module loaded."""
    database = getattr(slicer, "dicomDatabase", None)
    if database is None:
        return []
    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    return [f for f in (database.fileForInstance(uid) for uid in uids) if f]


#
# Logic
#
class QSMPlannerLogic(ScriptedLoadableModuleLogic):
    """The panel's settings and nodes -> ``QSMPlannerLib.panel.logic.PlannerLogic``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._planner = None

    def getParameterNode(self):
        return QSMPlannerParameterNode(super().getParameterNode())

    def planner(self):
        """The PlannerLogic of the application's scene (created on first use, after the dependency check,
        because QSMPlannerLib imports scipy, SimpleITK, ...). Its worker processes run PythonSlicer."""
        if self._planner is None or self._planner.scene is not slicer.mrmlScene:
            from QSMPlannerLib.panel.logic import PlannerLogic
            python = shutil.which("PythonSlicer")
            self._planner = PlannerLogic(slicer.mrmlScene, python=[python] if python else None,
                                         dicom_files=dicomFilesOf)
        return self._planner

    def applySettings(self, parameterNode) -> None:
        """The panel's choices as the workflow's ``PlanSettings`` (one set of settings for every stage)."""
        from QSMPlannerLib.workflow import PlanSettings
        p = parameterNode
        self.planner().settings = PlanSettings(mounting=p.mounting, electrode=p.electrode, margin_mm=p.marginMm,
                                               bfr=p.backgroundRemoval, inversion=p.inversion,
                                               target_kinds={"left": p.targetKindLeft, "right": p.targetKindRight})

    def reset(self) -> None:
        """Forget cached results (the scene is closing)."""
        if self._planner is not None:
            self._planner.reset()

    @staticmethod
    def missingRequirements() -> list:
        """Requirements in Resources/requirements.txt for this Python (their environment markers hold) whose
        distribution cannot be imported."""
        try:
            from packaging.markers import Marker
        except ImportError:  # Slicer's pip vendors it
            from pip._vendor.packaging.markers import Marker
        missing = []
        with open(REQUIREMENTS, encoding="utf-8") as f:
            for line in f:
                line = line.split("#")[0].strip()
                if not line:
                    continue
                if ";" in line and not Marker(line.split(";", 1)[1].strip()).evaluate():
                    continue
                name = line
                for sep in ("==", ">=", "<=", "~=", ">", "<", "[", ";"):
                    name = name.split(sep)[0]
                name = name.strip()
                module = IMPORT_NAMES.get(name, name.replace("-", "_"))
                if importlib.util.find_spec(module) is None:
                    missing.append(line)
        return missing

    def ensureDependencies(self, ask: bool = True, force: bool = False) -> bool:
        """Install missing Python packages with ``slicer.util.pip_install`` after the user agrees."""
        missing = self.missingRequirements()
        if not missing and not force:
            return True
        if not missing:
            slicer.util.infoDisplay("All Python packages QSMPlanner needs are installed.")
            return True
        if ask and not slicer.util.confirmOkCancelDisplay(
                "QSMPlanner needs these Python packages, which this Slicer does not have:\n\n  "
                + "\n  ".join(missing) + "\n\nInstall them now (downloads from the Python Package Index)?",
                "QSMPlanner: install Python packages"):
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(" ".join(f'"{m}"' for m in missing))
        return not self.missingRequirements()


#
# Test (runs inside 3D Slicer: Reload and Test, or ctest)
#
class QSMPlannerTest(ScriptedLoadableModuleTest):
    """The whole flow on the digital patient, with every stage QSMPlannerLib provides."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleDataRegistered()
        self.setUp()
        self.test_WholeFlowOnDigitalPatient()

    def test_SampleDataRegistered(self):
        """The digital patient is a Slicer sample data source that creates the input nodes."""
        if SAMPLE_CATEGORY not in getattr(slicer.modules, "sampleDataSources", {}):
            registerSampleData()
        sources = [s for s in slicer.modules.sampleDataSources[SAMPLE_CATEGORY] if s.sampleName == SAMPLE_NAME]
        self.assertEqual(len(sources), 1)
        self.delayDisplay("Loading the digital patient as sample data")
        nodes = sources[0].customDownloader(sources[0])
        self.assertTrue(nodes and nodes[0].GetName() == "T1")
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName("GRE_phase_echo1"))

    def test_WholeFlowOnDigitalPatient(self):
        """GRE -> QSM -> registrations -> MNI normalization and nuclei -> risk map -> both sides -> frame ->
        table, every long stage in a worker process (PythonSlicer), as the panel runs them; checked against
        the digital patient's truth; then the plan is saved and the scene read back."""
        import tempfile
        import numpy as np
        from QSMPlannerLib.scene import mrml
        from QSMPlannerLib.panel.flow import run_whole_flow

        logic = QSMPlannerLogic()
        self.assertTrue(logic.ensureDependencies(ask=False) or not logic.missingRequirements())
        planner = logic.planner()
        self.delayDisplay("Whole flow on the digital patient (a few minutes: MNI normalization)")
        out = run_whole_flow(planner, seed=0, small=True, atlas="normalize", ct_registration="register-or-known",
                             background=True, log=lambda m: self.delayDisplay(m, 10))
        patient, nodes, qsm = out["patient"], out["nodes"], out["qsm"]
        np.testing.assert_allclose(mrml.ras_from_ijk_of(qsm), patient.gre.ras_from_ijk, atol=1e-6)
        self.assertIs(qsm.GetParentTransformNode(), out["gre_transform"])          # observed
        err = np.abs(mrml.transform_matrix(out["gre_transform"])[:3, 3]
                     - patient.transforms["t1_from_gre"][:3, 3]).max()
        self.assertLess(err, 2.0)
        self.assertIsNone(nodes["CT"].GetParentTransformNode())                   # hardened
        self.assertLess(out["frame"].fre_mm, 1.0)
        self.assertEqual(mrml.segment_names(out["segmentation"])[:6],
                         ["STN_L", "STN_R", "SN_L", "SN_R", "RN_L", "RN_R"])
        for s, (target, entry) in planner.trajectories().items():
            self.assertLess(np.linalg.norm(target - patient.stn_centroids[f"STN_{s}"]), 6.0)
        rows = mrml.table_to_rows(out["table"])
        self.assertEqual([r["point"] for r in rows], ["AC", "PC", "MS", "target", "entry", "target", "entry"])
        xyz_from_t1 = patient.transforms["xyz_from_ct"] @ np.linalg.inv(patient.transforms["t1_from_ct"])
        for r in rows:
            ras = np.array([r["R_RAS_mm"], r["A_RAS_mm"], r["S_RAS_mm"]])
            expect = xyz_from_t1[:3, :3] @ ras + xyz_from_t1[:3, 3]
            self.assertLess(np.abs(np.array([r["X_Leksell_mm"], r["Y_Leksell_mm"], r["Z_Leksell_mm"]]) - expect).max(), 1.5)
        self.delayDisplay("Saving the plan and reading back the scene")
        url_before = slicer.mrmlScene.GetURL()
        paths = planner.save(pathlib.Path(tempfile.mkdtemp()), qsm, out["segmentation"], nodes["T1"], nodes["CT"])
        self.assertEqual(slicer.mrmlScene.GetURL(), url_before)                   # the open scene is unchanged
        fresh = mrml.load_mrb(paths["QSMPlanner.mrb"])
        self.assertEqual(mrml.segment_names(mrml.node_by_name(fresh, "Nuclei", "vtkMRMLSegmentationNode")),
                         mrml.segment_names(out["segmentation"]))
        self.delayDisplay("Test passed")
