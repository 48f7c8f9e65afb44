# Two commands do all set-up on a fresh Debian 12 / Python 3.11 machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSPKGS := libegl1 libegl-mesa0 libgl1-mesa-dri libglu1-mesa libxrender1 libxt6
DEMO_OUT ?= demo-out
export VTK_DEFAULT_OPENGL_WINDOW := vtkEGLRenderWindow

.PHONY: all setup syspkgs demo test bench clean

all: test

syspkgs:
	@missing=""; for p in $(SYSPKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) syspkgs
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/qsmplanner demo $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15 QSMPlanner/Testing/Python

bench: setup
	$(BIN)/python -m pip install -q -e ".[bench]"
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info QSMPlanner/*.egg-info
