# Quickstart targets. Each creates the virtual environment on first use and installs the package
# with its dev extras under constraints.txt (which pins the torch version; see that file).
#   make install CONSTRAINTS=mine.txt        your own pins (e.g. torch==2.5.1, with PIP_ARGS naming its index)
#   make install VENV=/path/to/env CONSTRAINTS=mine.txt   into an environment that already has your torch
#   make install PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple'
#                                            the CPU wheel of torch from PyTorch's index
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.co2s-installed

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_ARGS) -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/co2s demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf demo_output runs .pytest_cache
