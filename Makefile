# Two entry points, each working on a fresh machine: `make demo` and `make test`.
# The tests run Triton kernels on the CPU: TRITON_INTERPRET=1 must be set before triton is imported.
# torch is pinned to the 2.13.0 CPU build so nothing pulls the multi-GB CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow peers lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,plot]"
	touch $@

$(VENV)/.peers: $(VENV)/.installed .ci/install-peers
	PY=$(PY) bash .ci/install-peers
	touch $@

peers: $(VENV)/.peers

demo: $(VENV)/.installed
	$(VENV)/bin/rnnzoo demo

test: $(VENV)/.peers
	TRITON_INTERPRET=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --durations=15

test-slow: $(VENV)/.peers
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV)
