"""QSMPlannerLib: the core of QSMPlanner (no Slicer or Qt imports outside ``scene``).

Stages, one subpackage each, data flowing forward:
io -> phantom -> qsm -> registration -> segmentation -> stereotaxy -> planning -> report / scene.

Convention: world coordinates are RAS millimetres (as in 3D Slicer). LPS appears only at
file boundaries (ITK transforms, DICOM) and is always named as such.
"""
from pathlib import Path

__version__ = "0.1.0"

PACKAGE_DIR = Path(__file__).resolve().parent
RESOURCES_DIR = PACKAGE_DIR.parent / "Resources"
ATLAS_DIR = RESOURCES_DIR / "Atlases"
