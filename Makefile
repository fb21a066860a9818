# One entry point for humans and CI. Every target installs what it needs into .venv first.
SHELL := /bin/bash
# A Python 3.10 that really runs (a pyenv shim may exist without resolving to 3.10).
PY310 := $(shell for p in "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.10*/bin/python3.10 $$(command -v python3.10) /usr/bin/python3.10 /usr/local/bin/python3.10; do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
UV_VERSION := 0.5.31

.PHONY: setup setup-test run-local test test-fast bench lock clean

$(UV):
	@test -x "$(PY310)" || { echo "error: Python 3.10 not found (looked for python3.10 and pyenv's 3.10.13); install it with 'pyenv install 3.10.13'" >&2; exit 1; }
	$(PY310) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# --compile-bytecode: these machines set PYTHONDONTWRITEBYTECODE=1, so without .pyc files
# written at install time every process recompiles TensorFlow and Beam on import (measured:
# TensorFlow's import 23 -> 9 CPU-s, a Beam DirectRunner worker's start-up 26 -> 12 s).
$(VENV)/.main.stamp: $(UV) requirements/main.lock requirements/nodeps.txt pyproject.toml
	$(UV) pip install --python $(PY) --quiet --compile-bytecode -r requirements/main.lock
	$(UV) pip install --python $(PY) --quiet --no-deps -r requirements/nodeps.txt
	$(UV) pip install --python $(PY) --quiet --no-deps --no-build-isolation -e .
	@touch $@

$(VENV)/.test.stamp: $(VENV)/.main.stamp requirements/test.lock
	$(UV) pip install --python $(PY) --quiet --compile-bytecode -r requirements/test.lock
	@touch $@

setup: $(VENV)/.main.stamp
setup-test: $(VENV)/.test.stamp

## The main job on the embedded default: synthetic data -> ingest -> TFDV, with a summary.
run-local: setup
	$(VENV)/bin/deblur run-local $(ARGS)

## The test suite (what CI runs).
test: setup-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

## The fast lane for every change: the suite less the tests marked slow (multi-process
## training, whole run-locals, the KFP launcher contract, the retraining runs, the SIGTERM
## and peer-timeout races; the registry's push races take seconds and stay in).
test-fast: setup-test
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

## Benchmarks (not tests): results go to benchmarks/results/.
bench: setup-test
	$(PY) -m benchmarks.ingest_bench

## Re-resolve the locks from requirements/*.in within the measured reference set.
lock: $(UV)
	$(UV) pip compile --quiet --python-version 3.10 -c ../shared/reference/constraints-py310-tfx1.16.txt requirements/main.in -o requirements/main.lock
	$(UV) pip compile --quiet --python-version 3.10 -c ../shared/reference/constraints-py310-tfx1.16.txt requirements/test.in -o requirements/test.lock
	$(UV) pip compile --quiet --python-version 3.10 --python-platform x86_64-manylinux_2_28 -c requirements/main.lock requirements/gpu.in -o requirements/gpu.lock

clean:
	rm -rf $(VENV) build *.egg-info
