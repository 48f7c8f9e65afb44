"""DBS lead models and their placement along a trajectory.

Dimensions (mm) as specified by the manufacturers (Medtronic DBS 3387/3389 lead manual; Boston Scientific
Vercise DBS surgical implant manual, directional lead DB-2202), as also tabulated by OSS-DBS:
  Medtronic 3389: Ø 1.27, tip 1.5, 4 ring contacts 1.5 long, 0.5 apart (span 7.5)
  Medtronic 3387: Ø 1.27, tip 1.5, 4 ring contacts 1.5 long, 1.5 apart (span 10.5)
  Boston Scientific Vercise directional (DB-2202): Ø 1.3, tip 1.5, 4 levels 1.5 long, 0.5 apart:
      level 1 ring (contact 1), levels 2 and 3 split in 3 segments (contacts 2-4, 5-7), level 4 ring (8).
Contacts are numbered from the tip (Medtronic 0..3, Boston Scientific 1..8). Points are world RAS mm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .target import labelmap_of, side_name


@dataclass(frozen=True)
class ElectrodeModel:
    key: str
    name: str
    diameter_mm: float
    tip_mm: float                 # insulated tip below the first contact
    contact_length_mm: float
    spacing_mm: float             # gap between contact levels
    levels: tuple                 # per level from the tip: "ring" or "seg3"
    first_contact_number: int = 0
    segment_arc_deg: float = 90.0  # angular width of a segment (3 per level, 120° apart)

    @property
    def n_contacts(self) -> int:
        return sum(1 if lv == "ring" else 3 for lv in self.levels)

    @property
    def span_mm(self) -> float:
        n = len(self.levels)
        return n * self.contact_length_mm + (n - 1) * self.spacing_mm

    def level_center_from_tip(self, level: int) -> float:
        """Distance (mm) from the lead tip to the middle of contact level ``level`` (0 = most distal)."""
        return self.tip_mm + level * (self.contact_length_mm + self.spacing_mm) + self.contact_length_mm / 2


ELECTRODES = {
    "medtronic_3389": ElectrodeModel("medtronic_3389", "Medtronic 3389", 1.27, 1.5, 1.5, 0.5, ("ring",) * 4, 0),
    "medtronic_3387": ElectrodeModel("medtronic_3387", "Medtronic 3387", 1.27, 1.5, 1.5, 1.5, ("ring",) * 4, 0),
    "bsci_vercise_directional": ElectrodeModel(
        "bsci_vercise_directional", "Boston Scientific Vercise directional (DB-2202)", 1.3, 1.5, 1.5, 0.5,
        ("ring", "seg3", "seg3", "ring"), 1),
}


def electrode_model(key) -> ElectrodeModel:
    if isinstance(key, ElectrodeModel):
        return key
    k = str(key).lower().replace(" ", "_").replace("-", "_")
    aliases = {"3389": "medtronic_3389", "3387": "medtronic_3387", "vercise": "bsci_vercise_directional",
               "vercise_directional": "bsci_vercise_directional", "boston": "bsci_vercise_directional",
               "db_2202": "bsci_vercise_directional"}
    k = aliases.get(k, k)
    if k not in ELECTRODES:
        raise InputError(f"unknown electrode {key!r}; known: {', '.join(ELECTRODES)}")
    return ELECTRODES[k]


@dataclass
class Contact:
    number: int
    level: int
    kind: str               # "ring" or "segment"
    center_ras: np.ndarray
    angle_deg: float | None  # segments: direction around the lead (0 = toward the marker/anterior)
    in_target: bool         # its centre lies in the target structure
    target_fraction: float  # share of its surface samples in the target structure

    def to_dict(self) -> dict:
        return {"contact": self.number, "level": self.level, "kind": self.kind,
                "R": round(float(self.center_ras[0]), 3), "A": round(float(self.center_ras[1]), 3),
                "S": round(float(self.center_ras[2]), 3),
                "angle_deg": None if self.angle_deg is None else float(self.angle_deg),
                "in_target": bool(self.in_target), "target_fraction": round(float(self.target_fraction), 3)}


@dataclass
class ElectrodePlacement:
    """A lead on a trajectory: ``tip_ras`` and the unit ``axis_ras`` (tip -> entry), world RAS mm."""
    model: ElectrodeModel
    side: str
    target_ras: np.ndarray
    entry_ras: np.ndarray
    tip_ras: np.ndarray
    axis_ras: np.ndarray
    tip_depth_mm: float          # tip beyond the target along the path (mm; + deeper)
    contacts: list = field(default_factory=list)
    structure: str = ""          # the target structure the contacts are checked against (e.g. "STN_L")

    @property
    def n_in_target(self) -> int:
        return sum(c.in_target for c in self.contacts)

    def to_dict(self) -> dict:
        return {"model": self.model.key, "model_name": self.model.name, "side": self.side,
                "tip_ras": [round(float(v), 3) for v in self.tip_ras],
                "tip_depth_mm": float(self.tip_depth_mm), "diameter_mm": self.model.diameter_mm,
                "target_structure": self.structure, "contacts_in_target": self.n_in_target,
                "contacts": [c.to_dict() for c in self.contacts]}


def _perp_frame(axis):
    """(e_ant, e_lat): unit vectors perpendicular to ``axis``: anterior-ish (segment angle 0) and its
    90° rotation."""
    a = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    if np.linalg.norm(a) < 1e-6:
        a = np.array([1.0, 0.0, 0.0]) - axis[0] * axis
    a /= np.linalg.norm(a)
    return a, np.cross(axis, a)


def _inside_fraction(lab, world_from_lab, value, points_ras) -> np.ndarray:
    if lab is None:
        return np.zeros(len(points_ras))
    m = np.linalg.inv(np.asarray(world_from_lab, float) @ lab.ras_from_ijk)
    ijk = np.rint(points_ras @ m[:3, :3].T + m[:3, 3]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.array(lab.shape3)), axis=1)
    out = np.zeros(len(points_ras), bool)
    out[ok] = np.asarray(lab.data)[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]] == value
    return out


def place_electrode(model, target_ras, entry_ras, side=None, tip_depth_mm: float | None = None,
                    segmentation=None, world_from_segmentation=None, structure: str | None = None) -> ElectrodePlacement:
    """Place ``model`` on the trajectory target -> entry (world RAS mm). ``tip_depth_mm``: tip beyond the
    target along the path (default: the contact array centred on the target). Each contact gets its
    centre (RAS), and whether it lies in ``structure`` (default the STN of ``side``; e.g. "GPi_L") of
    ``segmentation`` (label map, values ``segmentation.structures.VALUES``, placed in the world by
    ``world_from_segmentation``): ``in_target`` when its centre is inside, ``target_fraction`` of sample
    points on the contact inside."""
    m = electrode_model(model)
    target = np.asarray(target_ras, float)
    entry = np.asarray(entry_ras, float)
    axis = entry - target
    if np.linalg.norm(axis) < 1e-6:
        raise InputError("entry and target coincide")
    axis /= np.linalg.norm(axis)
    if side is None:
        side = "right" if target[0] >= 0 else "left"
    side = side_name(side)
    if tip_depth_mm is None:
        tip_depth_mm = m.tip_mm + m.span_mm / 2.0
    tip = target - tip_depth_mm * axis
    lab = labelmap_of(segmentation) if segmentation is not None else None
    wfl = np.eye(4) if world_from_segmentation is None else world_from_segmentation
    from ..segmentation.structures import VALUES
    structure = structure or ("STN_L" if side == "left" else "STN_R")
    if structure not in VALUES:
        raise InputError(f"unknown structure {structure!r}; known: {', '.join(VALUES)}")
    value = VALUES[structure]
    e0, e1 = _perp_frame(axis)
    r = m.diameter_mm / 2.0
    contacts, number = [], m.first_contact_number
    for level, kind in enumerate(m.levels):
        c = tip + m.level_center_from_tip(level) * axis
        along = np.linspace(-m.contact_length_mm / 2, m.contact_length_mm / 2, 3)
        if kind == "ring":
            ang = np.deg2rad(np.arange(0, 360, 45))
            samples = (c[None, None, :] + along[:, None, None] * axis
                       + r * (np.cos(ang)[None, :, None] * e0 + np.sin(ang)[None, :, None] * e1)).reshape(-1, 3)
            inside = _inside_fraction(lab, wfl, value, np.vstack([c[None], samples]))
            contacts.append(Contact(number, level, "ring", c, None, bool(inside[0]), float(inside[1:].mean())))
            number += 1
        else:
            for k in range(3):
                a0 = 120.0 * k
                ang = np.deg2rad(a0 + np.linspace(-m.segment_arc_deg / 2, m.segment_arc_deg / 2, 3))
                mid = np.deg2rad(a0)
                centre = c + r * (np.cos(mid) * e0 + np.sin(mid) * e1)
                samples = (c[None, None, :] + along[:, None, None] * axis
                           + r * (np.cos(ang)[None, :, None] * e0 + np.sin(ang)[None, :, None] * e1)).reshape(-1, 3)
                inside = _inside_fraction(lab, wfl, value, np.vstack([centre[None], samples]))
                contacts.append(Contact(number, level, "segment", centre, a0, bool(inside[0]),
                                        float(inside[1:].mean())))
                number += 1
    return ElectrodePlacement(m, side, target, entry, tip, axis, float(tip_depth_mm), contacts, structure)


def electrode_polydata(placement: ElectrodePlacement, lead_length_mm: float | None = None):
    """(body, contacts) vtkPolyData in world RAS: the lead shaft as a tube from the tip to the entry, and
    the contacts as short cylinders (segments drawn as ring sectors)."""
    import vtk
    m, axis, tip = placement.model, placement.axis_ras, placement.tip_ras
    length = lead_length_mm or float(np.linalg.norm(placement.entry_ras - tip)) + 10.0

    def cylinder(p0, p1, radius, sides=24):
        line = vtk.vtkLineSource()
        line.SetPoint1(*[float(v) for v in p0])
        line.SetPoint2(*[float(v) for v in p1])
        tube = vtk.vtkTubeFilter()
        tube.SetInputConnection(line.GetOutputPort())
        tube.SetRadius(radius)
        tube.SetNumberOfSides(sides)
        tube.CappingOn()
        tube.Update()
        return tube.GetOutput()

    body = cylinder(tip, tip + length * axis, m.diameter_mm / 2.0)
    append = vtk.vtkAppendPolyData()
    for level, kind in enumerate(m.levels):
        c = tip + m.level_center_from_tip(level) * axis
        p0, p1 = c - axis * m.contact_length_mm / 2, c + axis * m.contact_length_mm / 2
        if kind == "ring":
            append.AddInputData(cylinder(p0, p1, m.diameter_mm / 2.0 + 0.02))
        else:
            for cont in placement.contacts:
                if cont.level == level:
                    off = (cont.center_ras - c) * 0.35
                    append.AddInputData(cylinder(p0 + off, p1 + off, m.diameter_mm / 2.0 * 0.72, 12))
    append.Update()
    return body, append.GetOutput()
