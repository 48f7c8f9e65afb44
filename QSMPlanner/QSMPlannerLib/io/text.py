"""Numbers typed by a user (command-line arguments): parsed and checked, or an argparse error (exit 2)."""
from __future__ import annotations

import argparse

import numpy as np


def vec3(text: str) -> np.ndarray:
    """Parse 'x,y,z' into a float array (argparse type)."""
    try:
        v = np.array([float(t) for t in text.replace(" ", "").split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers 'x,y,z', got {text!r}")
    if v.shape != (3,) or not np.isfinite(v).all():
        raise argparse.ArgumentTypeError(f"expected three finite numbers 'x,y,z', got {text!r}")
    return v
