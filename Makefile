# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   - create .venv, install the station (the base install: no torch), run it on its embedded default
#   make test   - create .venv, install everything (the dev extra, which pulls the train extra), run the whole suite
# and one more for CI:
#   make test-lean - the base install alone, in a new virtualenv ($(LEAN_VENV)): no torch, the demo and a short replay
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip
PIP_FLAGS ?= --disable-pip-version-check --progress-bar off
DEMO_ARGS ?=
LEAN_VENV ?= .venv-lean

.PHONY: demo test test-lean install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -q --upgrade pip setuptools wheel

# The base install: what the line needs (setup.cfg install_requires). `make test` adds the dev extra on top.
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(PIP) install $(PIP_FLAGS) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install $(PIP_FLAGS) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/station demo $(DEMO_ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check station engines calibration ui tests inspection_core inspection
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS)

# The base install as a line PC gets it: `pip install .` (not editable, so the wheel's package data is what runs) into
# a new virtualenv; then .ci/lean_check.py checks that no torch, triton or nvidia-* package came with it, runs
# `station demo --headless` and a short `station run` replay, and compares the demo's verdicts with the full
# install's in $(VENV) when there is one.
test-lean:
	rm -rf $(LEAN_VENV) build
	$(PYTHON) -m venv $(LEAN_VENV)
	$(LEAN_VENV)/bin/python -m pip install $(PIP_FLAGS) -q .
	rm -rf build
	QT_QPA_PLATFORM=offscreen $(LEAN_VENV)/bin/python .ci/lean_check.py --full $(VENV)

clean:
	rm -rf $(VENV) $(LEAN_VENV) build *.egg-info .pytest_cache
