"""``PlanSettings``: every choice that shapes a plan, in one place, with one set of defaults for the command
line and the Slicer panel."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import InputError

from ..planning.kinds import TARGET_KINDS  # noqa: F401 (the one list of valid kinds)

SIDES = ("left", "right")


def _default_kinds() -> dict:
    return {side: "stn" for side in SIDES}


@dataclass
class PlanSettings:
    """What a plan depends on besides the images.

    mounting: Leksell arc mounting for ring/arc angles; electrode: ``planning.ELECTRODES`` key;
    margin_mm: required clearance (mm) from the lead and microelectrode surfaces to vessels;
    target_kinds: {"left"|"right": kind}; bfr / inversion: QSM background removal and dipole inversion;
    mer_spacing_mm / mer_pattern: microelectrode tracks; adjust_target_mm: how far a suggested target may
    move inside the nucleus when a vein blocks every entry (0: never); frame_system: the frame on the CT
    ("leksell", "crw", "brw"; None: found from its localizer)."""
    mounting: str = "lateral-right"
    electrode: str = "medtronic_3389"
    margin_mm: float = 3.0
    target_kinds: dict = field(default_factory=_default_kinds)
    bfr: str = "pdf"
    inversion: str = "tv"
    mer_spacing_mm: float = 2.0
    mer_pattern: str = "cross"
    adjust_target_mm: float = 2.5
    frame_system: str | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "PlanSettings":
        """Raise InputError naming the first setting out of range."""
        from ..planning import ELECTRODES
        from ..qsm.pipeline import BFR_METHODS, INVERSION_METHODS
        from ..stereotaxy import MOUNTINGS
        choices = {"mounting": MOUNTINGS, "electrode": tuple(ELECTRODES), "bfr": BFR_METHODS,
                   "inversion": INVERSION_METHODS, "mer_pattern": ("cross", "grid")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InputError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(allowed)}")
        from ..stereotaxy import SYSTEMS
        if self.frame_system is not None and self.frame_system not in SYSTEMS:
            raise InputError(f"unknown frame system {self.frame_system!r}; valid: {', '.join(SYSTEMS)}")
        kinds = dict(self.target_kinds or {})
        for side, kind in kinds.items():
            if side not in SIDES:
                raise InputError(f"unknown side {side!r} in the target kinds; valid: {', '.join(SIDES)}")
            if kind not in TARGET_KINDS:
                raise InputError(f"unknown target kind {kind!r}; valid: {', '.join(TARGET_KINDS)}")
        self.target_kinds = {side: kinds.get(side, "stn") for side in SIDES}
        for name in ("margin_mm", "adjust_target_mm"):
            if not 0.0 <= float(getattr(self, name)) <= 20.0:
                raise InputError(f"{name} must be within 0..20 mm, got {getattr(self, name)}")
        if not 0.0 < float(self.mer_spacing_mm) <= 5.0:
            raise InputError(f"mer_spacing_mm must be within 0..5 mm, got {self.mer_spacing_mm}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PlanSettings":
        known = {k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)
