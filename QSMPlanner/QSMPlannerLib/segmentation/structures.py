"""The segmented structures: output label values, CIT168 prior values, colours, terminology, guard rails.

Two groups segmented by separate stages on the same QSM: the midbrain nuclei (STN, SN, RN; values 1-6)
and the pallidum (GPi, GPe; values 7-10)."""
from __future__ import annotations

# output label value -> name (the .seg.nrrd segment names, exactly); left = odd values
MIDBRAIN_NAMES = {1: "STN_L", 2: "STN_R", 3: "SN_L", 4: "SN_R", 5: "RN_L", 6: "RN_R"}
PALLIDUM_NAMES = {7: "GPi_L", 8: "GPi_R", 9: "GPe_L", 10: "GPe_R"}
NAMES = {**MIDBRAIN_NAMES, **PALLIDUM_NAMES}
VALUES = {name: value for value, name in NAMES.items()}

# CIT168 subcortical atlas values of each structure (SN = SNc/PBP/VTA + SNr)
CIT168_VALUES = {"STN_L": (16,), "STN_R": (116,), "SN_L": (7, 9), "SN_R": (107, 109),
                 "RN_L": (8,), "RN_R": (108,), "GPi_L": (6,), "GPi_R": (106,), "GPe_L": (5,), "GPe_R": (105,)}

COLORS = {"STN": (0.95, 0.55, 0.10), "SN": (0.25, 0.55, 0.95), "RN": (0.90, 0.15, 0.20),
          "GPi": (0.20, 0.75, 0.35), "GPe": (0.60, 0.85, 0.55)}

# Terminology: category "Anatomical structure" (SNOMED CT), type coded in UBERON, side in SNOMED CT.
CATEGORY = ("SCT", "123037004", "Anatomical Structure")
TYPES = {"STN": ("UBERON", "0001906", "Subthalamic nucleus"),
         "SN": ("UBERON", "0002038", "Substantia nigra"),
         "RN": ("UBERON", "0002683", "Red nucleus"),
         "GPi": ("UBERON", "0002477", "Medial globus pallidus"),
         "GPe": ("UBERON", "0002476", "Lateral globus pallidus")}
SIDES = {"L": ("SCT", "7771000", "Left"), "R": ("SCT", "24028007", "Right")}

# Guard rails (adult nuclei at 3 T / 1 mm; generous on purpose)
VOLUME_RANGE_MM3 = {"STN": (40.0, 500.0), "SN": (150.0, 2000.0), "RN": (80.0, 1000.0),
                    "GPi": (150.0, 1500.0), "GPe": (300.0, 3000.0)}
# mean χ (ppm); the zero of a QSM is a choice of reference: the contrast-to-noise check is the relative one
CHI_RANGE_PPM = {"STN": (0.01, 0.35), "SN": (0.03, 0.45), "RN": (0.03, 0.40), "GPi": (0.03, 0.45),
                 "GPe": (0.03, 0.45)}
# voxel χ a nucleus may hold (ppm); outside: vessel, artefact or CSF/air edge
VOXEL_CHI_PPM = {"STN": (-0.05, 0.25), "SN": (-0.05, 0.35), "RN": (-0.05, 0.30), "GPi": (-0.05, 0.45),
                 "GPe": (-0.05, 0.45)}
# voxels outside this range are left out of the localization (streaks, veins, air edges)
CHI_VALID_PPM = (-0.10, 0.30)
MAX_SHIFT_FROM_PRIOR_MM = 8.0      # beyond the localization search: something went wrong
MAX_SHIFT_WITHIN_SIDE_MM = 3.5     # a nucleus moving away from its same-side neighbours
MIN_CNR = 1.5            # (structure mean - local background) / noise sigma
MAX_LR_VOLUME_RATIO = 2.0
MIN_COMPACTNESS = 0.25   # sphericity pi^(1/3) (6V)^(2/3) / A of the voxel surface
# Typical semi-axes (mm) of a template ellipsoid used when a seed is given but the prior has no voxels
TEMPLATE_SEMI_AXES_MM = {"STN": (5.5, 3.0, 2.5), "SN": (7.0, 4.0, 3.0), "RN": (3.5, 3.5, 4.0)}
# the pallidum's voxels may be brighter than the midbrain's (up to ~0.3 ppm in the elderly)
PALLIDUM_CHI_VALID_PPM = (-0.10, 0.45)


def kind(name: str) -> str:
    """'STN_L' -> 'STN'."""
    return name.split("_")[0]


def side(name: str) -> str:
    return name.split("_")[1]


def terminology(name: str) -> dict:
    """slicerio terminology dict of a segment."""
    return {"contextName": "Segmentation category and type - 3D Slicer General Anatomy list",
            "category": list(CATEGORY), "type": list(TYPES[kind(name)]),
            "typeModifier": list(SIDES[side(name)]),
            "anatomicContextName": "Anatomic codes - DICOM master list"}


def color(name: str) -> tuple:
    return COLORS[kind(name)]
