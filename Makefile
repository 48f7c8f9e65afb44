# Two commands do all set-up on a fresh Debian 12 / Python 3.11 machine: `make demo` and `make test`.
# `make test` also runs the suite on 3D Slicer's Pythons with the package versions Slicer bundles
# (ci/requirements-slicer*.txt): Python 3.9 as in Slicer 5.8, Python 3.12 as in Slicer 5.12. Their
# interpreters come from pyenv (PY39=/path/to/python3.9 PY312=... to use others; MATRIX= to skip).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSPKGS := libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libxrender1 libxt6
DEMO_OUT ?= demo-out
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder -q -p no:cacheprovider QSMPlanner/Testing/Python
export VTK_DEFAULT_OPENGL_WINDOW := vtkEGLRenderWindow

PYENV_ROOT ?= $(HOME)/.pyenv
newest = $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/$(1).*/bin/python) $(shell command -v python$(1))))
PY39 ?= $(call newest,3.9)
PY312 ?= $(call newest,3.12)
MATRIX ?= py39 py312
# Python, pinned packages and model cache of each Slicer leg
PYTHON_py39 = $(PY39)
PINS_py39 := ci/requirements-slicer58.txt
PYTHON_py312 = $(PY312)
PINS_py312 := ci/requirements-slicer512.txt
CACHE_ROOT := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)

.PHONY: all setup syspkgs demo test test-main bench clean

all: test

syspkgs:
	@missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | syspkgs
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --no-compile -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

# A Slicer leg's venv is rebuilt whenever a pin changes, so it holds exactly the pinned versions.
.venv-%/.installed: pyproject.toml QSMPlanner/Resources/requirements.txt ci/requirements-slicer58.txt \
                    ci/requirements-slicer512.txt | syspkgs
	@test -x "$(PYTHON_$*)" || { echo "error: no Python for the $* leg (pyenv version $*, or set PY39=/PY312=);" \
	  "make test MATRIX= skips the Slicer Pythons"; exit 2; }
	rm -rf .venv-$*
	$(PYTHON_$*) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -q --no-compile -r $(PINS_$*)
	.venv-$*/bin/python -m pip install -q --no-deps -e .
	touch $@

demo: setup
	$(BIN)/qsmplanner demo $(DEMO_OUT)

# The Slicer legs' venvs are built (mostly download and unpacking) while the main suite runs; then the legs.
test:
	$(MAKE) -j --output-sync=target test-main $(foreach leg,$(MATRIX),.venv-$(leg)/.installed)
	$(if $(MATRIX),$(MAKE) $(addprefix test-,$(MATRIX)))

test-main: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS) --durations=15

test-py%: .venv-py%/.installed
	@echo "== Slicer's Python $$(.venv-py$*/bin/python -V 2>&1 | cut -d' ' -f2) with $(PINS_py$*)"
	QSMPLANNER_SLICER_PINS=$(PINS_py$*) QSMPLANNER_CACHE=$(CACHE_ROOT)/qsmplanner/py$* \
	  .venv-py$*/bin/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(addprefix .venv-,$(MATRIX)) $(DEMO_OUT) build *.egg-info QSMPlanner/*.egg-info
