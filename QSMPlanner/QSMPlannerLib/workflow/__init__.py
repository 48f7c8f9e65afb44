"""The workflow: the stages of a plan as explicit calls, one ``PlanSettings``, one plan document, and the
process runner that keeps a GUI responsive. The command line (``cli``) and the Slicer panel (``panel``) are
two thin faces on it, so both give the same plan.

Layering (imports only go down): faces (cli, panel) -> workflow -> export (report, scene) -> stages
(io, qsm, registration, segmentation, stereotaxy, planning) -> base (volume, errors, progress).
"""
from .document import plan_document, write_plan_files
from .run import PatientPlan, export_plan, plan_patient
from .settings import SIDES, TARGET_KINDS, PlanSettings

__all__ = ["PlanSettings", "SIDES", "TARGET_KINDS", "plan_document", "write_plan_files", "PatientPlan",
           "plan_patient", "export_plan"]
