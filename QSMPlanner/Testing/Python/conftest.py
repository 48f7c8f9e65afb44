"""Shared pytest fixtures (owned by the integrator; stage-specific fixtures live in their test files)."""
import os
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


# The longest files first: with --no-loadscope-reorder, pytest-xdist hands whole files (--dist loadfile) to
# the workers in collection order, so a long file collected last would leave the other worker idle.
LONGEST_FILES = ("test_module_widget.py", "test_workflow.py", "test_registration_atlas.py",
                 "test_registration_heads.py", "test_stereotaxy_frame.py", "test_segmentation_robust.py",
                 "test_registration_rigid.py", "test_phantom.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))
    # make test's Slicer legs (QSMPLANNER_SLICER_PINS set) leave the long end-to-end accuracy cases to the
    # main leg: the same code paths run there on the smaller cases of each file
    if os.environ.get("QSMPLANNER_SLICER_PINS"):
        skip = pytest.mark.skip(reason="main_leg: a long accuracy case, run in the main leg only")
        for item in items:
            if item.get_closest_marker("main_leg"):
                item.add_marker(skip)
