"""Named points as 3D Slicer markups point lists (``.mrk.json``).

Points are always passed in and returned in RAS mm (the project's world). The file may store them
in RAS or LPS (``coordinateSystem``); Slicer converts LPS files to RAS on loading, and so does
``read_points``. Control point labels are the point names.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import write_text

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
          "Resources/Schema/markups-schema-v1.0.3.json#")
_LPS_FLIP = np.array([-1.0, -1.0, 1.0])


def _as_point(name, value, path) -> np.ndarray:
    p = np.asarray(value, dtype=float).reshape(-1)
    if p.shape != (3,) or not np.isfinite(p).all():
        raise InputError(f"point {name!r} is not three finite numbers: {value!r}", path)
    return p


def write_points(path, points: dict, coordinate_system: str = "RAS", name: str = "",
                 descriptions: dict | None = None) -> Path:
    """Write ``{"AC": ras_xyz, ...}`` (RAS mm) as a Slicer point list; returns the path.

    ``coordinate_system`` ("RAS" or "LPS") is how the positions are stored in the file.
    ``name`` is the node name Slicer shows (default: the file name without ``.mrk.json``).
    """
    path = Path(path)
    system = coordinate_system.upper()
    if system not in ("RAS", "LPS"):
        raise ValueError(f"coordinate_system must be 'RAS' or 'LPS', not {coordinate_system!r}")
    descriptions = descriptions or {}
    control_points = []
    for n, (label, value) in enumerate(points.items(), start=1):
        ras = _as_point(label, value, path)
        pos = ras * _LPS_FLIP if system == "LPS" else ras
        control_points.append({
            "id": str(n), "label": str(label), "description": str(descriptions.get(label, "")),
            "associatedNodeID": "", "position": [float(v) for v in pos],
            "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
            "selected": True, "locked": False, "visibility": True, "positionStatus": "defined",
        })
    doc = {"@schema": SCHEMA, "markups": [{
        "type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm",
        "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(control_points),
        "name": name or path.name.replace(".mrk.json", "").replace(".json", ""),
        "controlPoints": control_points, "measurements": [],
    }]}
    write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def _flip_of(markup, path) -> np.ndarray:
    """Multiplier taking the markup's stored coordinates to RAS."""
    system = str(markup.get("coordinateSystem", "LPS") or "LPS").upper()
    if system not in ("RAS", "LPS"):
        raise InputError(f"unknown markups coordinateSystem {system!r}", path)
    return _LPS_FLIP if system == "LPS" else np.ones(3)


def _control_points(markup, path) -> dict:
    """{label: RAS xyz} of a markup's defined control points; a repeated label is an error."""
    flip = _flip_of(markup, path)
    out = {}
    for i, cp in enumerate(markup.get("controlPoints") or []):
        if cp.get("positionStatus", "defined") not in ("defined", "preview") or "position" not in cp:
            continue
        label = str(cp.get("label") or f"P-{i + 1}")
        if label in out:
            raise InputError(f"control point label {label!r} appears twice", path)
        out[label] = _as_point(label, cp["position"], path) * flip
    return out


def read_points(path) -> dict:
    """Read a Slicer markups file (``.mrk.json``; the first markup in it) as ``{label: RAS xyz}``.

    LPS files are converted to RAS. Raises ``InputError`` naming the file if it is not a markups
    file, has no control points, or repeats a label.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("markups file not found", path)
    try:
        doc = json.loads(path.read_text())
        markup = doc["markups"][0]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"not a Slicer markups JSON file ({exc.__class__.__name__}: {exc})",
                         path) from exc
    out = _control_points(markup, path)
    if not out:
        raise InputError("the markups file holds no control points", path)
    return out


def _roi_corners(markup, path) -> np.ndarray:
    """The 8 corners (file coordinates) of a Slicer ROI markup: centre, size and axis orientation."""
    centre = _as_point(markup.get("name", "ROI"), markup.get("center"), path)
    size = _as_point(markup.get("name", "ROI"), markup.get("size"), path)
    axes = np.asarray(markup.get("orientation", np.eye(3).ravel()), float).reshape(3, 3)
    if (size <= 0).any() or not np.isfinite(axes).all():
        raise InputError(f"ROI {markup.get('name', '')!r}: size must be positive", path)
    signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    return centre + (signs * size) @ axes.T   # columns of ``orientation`` are the ROI axes


def read_seeds(path) -> dict:
    """Seeds for a segmentation from a Slicer markups file: every point list's control points
    (``{label: RAS xyz}``) and every ROI (box) by its name (``{name: (8, 3) RAS corners}``).

    Raises ``InputError`` naming the file if it holds no point or box, or names one twice."""
    path = Path(path)
    if not path.is_file():
        raise InputError("markups file not found", path)
    try:
        markups = json.loads(path.read_text())["markups"]
        if not isinstance(markups, list):
            raise TypeError("'markups' is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a Slicer markups JSON file ({exc.__class__.__name__}: {exc})", path) from exc
    out = {}
    for i, markup in enumerate(markups):
        if str(markup.get("type", "")).upper() == "ROI":
            cps = markup.get("controlPoints") or [{}]
            name = str(markup.get("name") or cps[0].get("label") or f"ROI-{i + 1}")
            found = {name: _roi_corners(markup, path) * _flip_of(markup, path)}
        else:
            found = _control_points(markup, path)
        for name, value in found.items():
            if name in out:
                raise InputError(f"seed {name!r} appears twice", path)
            out[name] = value
    if not out:
        raise InputError("the markups file holds no point or box", path)
    return out
