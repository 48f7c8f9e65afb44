"""Shared pytest fixtures (owned by the integrator; stage-specific fixtures live in their test files)."""
from pathlib import Path

import numpy as np
import pytest

TESTING_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTING_DIR.parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def real_phase_dir() -> Path:
    """The real 3-echo GRE crop shipped for tests (ROMEO.jl test data, MIT)."""
    return TESTING_DIR / "Data" / "real-phase"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
