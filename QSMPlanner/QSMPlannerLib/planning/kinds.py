"""Target kinds (STN, GPi, VIM): one suggestion per kind and side, with its cross-check.

``TARGET_KINDS`` is the one list of valid kinds (CLI choices, workflow settings, the panel's combo box).
``suggest_target_of_kind`` is the one entry point: it returns a ``TargetSuggestion`` holding the target,
the other estimate it is checked against (direct from the QSM segmentation vs indirect from AC-PC
formulas) and their difference, in world RAS mm and in AC-PC mm, plus one sentence for the report.

  kind  target                                   cross-check
  stn   direct: dorsolateral STN (``target``)     none
  gpi   direct: posteroventral GPi (``gpi``)      indirect: classic AC-PC coordinates
  vim   indirect: AC-PC length + third-ventricle  indirect: fixed distance from the midline
        wall (``vim``)                            (the same formula ignoring the ventricle's width)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..volume import apply

TARGET_KINDS = ("stn", "gpi", "vim")
KIND_NAMES = {"stn": "STN", "gpi": "GPi", "vim": "VIM"}


def check_target_kind(kind) -> str:
    """``kind`` in lower case if it is one of ``TARGET_KINDS``, else InputError listing them."""
    k = str(kind).strip().lower()
    if k not in TARGET_KINDS:
        raise InputError(f"unknown target kind {kind!r}; valid kinds: {', '.join(TARGET_KINDS)}")
    return k


def acpc_frame(landmarks) -> np.ndarray | None:
    """4x4 RAS -> AC-PC mm (``stereotaxy.acpc_from_ras``) from {"AC", "PC", "MS"}, or None without them."""
    if not landmarks or not all(k in landmarks for k in ("AC", "PC", "MS")):
        return None
    from ..stereotaxy.coordinates import acpc_from_ras
    return acpc_from_ras(landmarks["AC"], landmarks["PC"], landmarks["MS"])


def describe_acpc(c) -> str:
    """'21.0 mm lateral, AP +2.5 mm, vertical -5.0 mm' from signed AC-PC mm (x + right)."""
    c = np.asarray(c, float)
    return f"{abs(c[0]):.1f} mm lateral, AP {c[1]:+.1f} mm, vertical {c[2]:+.1f} mm"


@dataclass
class Estimate:
    """One estimate of a target: ``method`` "direct" (from the patient's QSM segmentation) or "indirect"
    (from AC-PC landmarks by a formula); ``ras`` world RAS mm; ``acpc`` AC-PC mm (None without landmarks)."""
    method: str
    description: str
    ras: np.ndarray
    acpc: np.ndarray | None = None

    def to_dict(self) -> dict:
        d = {"method": self.method, "description": self.description,
             "RAS_mm": [round(float(v), 3) for v in self.ras]}
        if self.acpc is not None:
            d["ACPC_mm"] = [round(float(v), 3) for v in self.acpc]
        return d


@dataclass
class TargetSuggestion:
    """The suggested target of ``kind`` on ``side`` ('left'/'right') and its cross-check.

    target: the estimate the plan uses (direct for STN and GPi, indirect for VIM). cross_check: the
    other estimate (GPi: the classic indirect coordinates; VIM: the fixed-midline variant) or None.
    difference: cross_check - target, in AC-PC mm when landmarks were given, else in RAS mm.
    details: kind-specific numbers (depths, widths, lengths); statement: one sentence for the report.
    World = the space of the landmarks and of ``world_from_segmentation``'s output (RAS mm)."""
    kind: str
    side: str
    target: Estimate
    cross_check: Estimate | None = None
    details: dict = field(default_factory=dict)
    statement: str = ""

    @property
    def target_ras(self) -> np.ndarray:
        return np.asarray(self.target.ras, float)

    @property
    def direct(self) -> Estimate | None:
        return next((e for e in (self.target, self.cross_check) if e is not None and e.method == "direct"), None)

    @property
    def indirect(self) -> Estimate | None:
        return next((e for e in (self.target, self.cross_check) if e is not None and e.method == "indirect"),
                    None)

    @property
    def difference(self) -> dict | None:
        """{"system", "vector_mm" (cross_check - target), "distance_mm"}, None without a cross-check."""
        if self.cross_check is None:
            return None
        if self.target.acpc is not None and self.cross_check.acpc is not None:
            d, system = np.asarray(self.cross_check.acpc) - self.target.acpc, "ACPC"
        else:
            d, system = np.asarray(self.cross_check.ras) - self.target.ras, "RAS"
        return {"system": system, "vector_mm": [round(float(v), 3) for v in d],
                "distance_mm": round(float(np.linalg.norm(d)), 3)}

    def to_dict(self) -> dict:
        """JSON-ready: every number names its coordinate system (RAS: world RAS mm; ACPC: mm from the
        mid-commissural point, +x right, +y anterior, +z superior)."""
        return {"kind": self.kind, "side": self.side, "target": self.target.to_dict(),
                "cross_check": None if self.cross_check is None else self.cross_check.to_dict(),
                "direct": None if self.direct is None else self.direct.to_dict(),
                "indirect": None if self.indirect is None else self.indirect.to_dict(),
                "difference": self.difference, "details": _jsonable(self.details),
                "statement": self.statement}


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return round(float(v), 3)
    if isinstance(v, np.integer):
        return int(v)
    return v


def estimate(method: str, description: str, ras, frame) -> Estimate:
    """An ``Estimate`` at world ``ras`` with its AC-PC coordinates under ``frame`` (4x4 or None)."""
    ras = np.asarray(ras, float).reshape(3)
    return Estimate(method, description, ras, None if frame is None else apply(frame, ras))


def suggest_target_of_kind(kind: str, side, segmentation=None, landmarks=None, world_from_segmentation=None,
                           third_ventricle=None) -> TargetSuggestion:
    """The target of ``kind`` ('stn', 'gpi', 'vim') on ``side``, in world RAS mm.

    segmentation: the ``segmentation.NucleiSegmentation`` (or its label map; values
    ``segmentation.NAMES``) placed in the world by ``world_from_segmentation`` (4x4; default identity),
    needed for 'stn' and 'gpi'. landmarks: {"AC", "PC", "MS"} world RAS mm; needed for 'vim', used by
    'gpi' for the posteroventral axes and the indirect cross-check, and by every kind for the AC-PC
    coordinates. third_ventricle ('vim'): a ``vim.ThirdVentricle`` (``vim.measure_third_ventricle`` on
    the T1) or its width in mm (walls symmetric about the mid-sagittal plane); None: the fixed-midline
    formula is the target."""
    kind = check_target_kind(kind)
    if kind == "vim":
        from .vim import suggest_vim
        return suggest_vim(side, landmarks, third_ventricle)
    if segmentation is None:
        raise InputError(f"a {KIND_NAMES[kind]} target needs the segmentation")
    if kind == "gpi":
        from .gpi import suggest_gpi
        return suggest_gpi(segmentation, side, landmarks, world_from_segmentation)
    from .target import suggest_stn
    return suggest_stn(segmentation, side, landmarks, world_from_segmentation)


def indirect_check(kind: str, target_ras, landmarks, third_ventricle=None) -> dict | None:
    """The indirect AC-PC target of ``kind`` on the side of ``target_ras`` (any target, e.g. the surgeon's;
    world RAS mm) and its difference from it: {"kind", "side", "formula", "RAS_mm", "ACPC_mm",
    "difference_ACPC_mm" (indirect - target), "distance_mm", "statement"}. None for the STN (no indirect
    formula here) or without landmarks. ``third_ventricle`` as ``suggest_target_of_kind`` (VIM)."""
    kind = check_target_kind(kind)
    frame = acpc_frame(landmarks)
    if kind == "stn" or frame is None:
        return None
    target_acpc = apply(frame, target_ras)
    side = "right" if target_acpc[0] >= 0 else "left"
    if kind == "gpi":
        from .gpi import GPI_INDIRECT_TEXT, gpi_indirect_acpc
        acpc, formula = gpi_indirect_acpc(side), GPI_INDIRECT_TEXT
        ras = apply(np.linalg.inv(frame), acpc)
    else:
        from .vim import suggest_vim
        vim = suggest_vim(side, landmarks, third_ventricle)
        acpc, ras, formula = vim.target.acpc, vim.target.ras, vim.target.description
    d = np.asarray(acpc) - target_acpc
    return {"kind": kind, "side": side, "formula": formula, "RAS_mm": [round(float(v), 3) for v in ras],
            "ACPC_mm": [round(float(v), 3) for v in acpc], "difference_ACPC_mm": [round(float(v), 3) for v in d],
            "distance_mm": round(float(np.linalg.norm(d)), 3),
            "statement": f"the {side} {KIND_NAMES[kind]} indirect target ({describe_acpc(acpc)}) lies "
                         f"{np.linalg.norm(d):.1f} mm from the target"}
