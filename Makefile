# One entry point for humans and CI. Every target installs what it needs into .venv first.
SHELL := /bin/bash
# A Python 3.10 that really runs (a pyenv shim may exist without resolving to 3.10).
PY310 := $(shell for p in "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.10*/bin/python3.10 $$(command -v python3.10) /usr/bin/python3.10 /usr/local/bin/python3.10; do "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
UV := $(VENV)/bin/uv
PY := $(VENV)/bin/python
UV_VERSION := 0.5.31

.PHONY: setup setup-test run-local base-model test test-fast bench kfp-venv kfp-roundtrip serve-venv serve-bench lock clean

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

## The base model the quickstart warm-starts from (models/local/, models/README.md): the local
## experiment trained BASE_STEPS steps on a synthetic draw of its own (seed 1: 192 training
## pairs, no image of the quickstart's seed-0 sets), ~65-75 min on 2 CPU cores, at the constant
## learning rate it was trained with (the experiment's cosine came later). It writes under
## BASE_DIR; copy BASE_DIR/train/saved_model to models/local/ to ship it.
BASE_DIR ?= runs/base-model
BASE_STEPS ?= 18000
base-model: setup
	$(VENV)/bin/deblur synth-data $(BASE_DIR)/data --pairs 192 --test-pairs 8 --seed 1
	$(VENV)/bin/deblur ingest --layout gopro --root $(BASE_DIR)/data/gopro_synth --out $(BASE_DIR)/examples --split train --overwrite
	$(VENV)/bin/deblur train --experiment local --examples $(BASE_DIR)/examples --out $(BASE_DIR)/train --steps $(BASE_STEPS) --set train.lr_schedule=constant

## The test suite (what CI runs), on TEST_WORKERS workers (pytest-xdist), a test module to a
## worker: 2, the cores of these machines; TEST_WORKERS=0 runs it in one process. conftest.py
## says how the modules are split and ordered. --durations=30: every run, CI's too, ends with its
## 30 slowest tests, where the suite's time goes.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30

test: setup-test
	$(PYTEST) $(PYTEST_ARGS)

## The fast lane for every change: the suite less the tests marked slow (multi-process
## training, whole run-locals, the KFP launcher contract, the kfp 2.5 / 2.17 round trips, the
## retraining runs, the SIGTERM and peer-timeout races; the registry's push races take seconds
## and stay in).
test-fast: setup-test
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

## Benchmarks (not tests): results go to benchmarks/results/.
bench: setup-test
	$(PY) -m benchmarks.ingest_bench

## The compiled KFP package read back, compiled into a kfp pipeline and submitted by another
## kfp SDK (tests/kfp_roundtrip.py; infra/README.md "Versions"): `make kfp-roundtrip KFP=2.17`
## (the default) in its own venv .venv-kfp217 from requirements/kfp217.lock, built when
## missing (kfp 2.17 needs protobuf >= 6, TFX 1.16 pins 3.20.3); KFP=2.5 is .venv's own kfp.
## ARGS: --spec X.json (a compiled spec instead of infra/kubeflow.example.yaml), --out DIR, --json.
KFP ?= 2.17
ifeq ($(KFP),2.5)
KFP_PY := $(PY)
KFP_ENV := $(VENV)/.main.stamp
else
KFP_VENV := .venv-kfp$(subst .,,$(KFP))
KFP_PY := $(KFP_VENV)/bin/python
KFP_ENV := $(KFP_VENV)/.stamp
endif

.venv-kfp%/.stamp: requirements/kfp%.lock | $(UV)
	@test -x "$(PY310)" || { echo "error: Python 3.10 not found (see make setup)" >&2; exit 1; }
	rm -rf .venv-kfp$*
	$(UV) venv --quiet --python "$(PY310)" .venv-kfp$*
	$(UV) pip install --python .venv-kfp$*/bin/python --quiet --compile-bytecode -r $<
	@touch $@

requirements/kfp%.lock:
	@echo "error: no $@ for KFP=$(KFP): name the version in requirements/kfp$*.in and run make lock (KFP=2.17 and KFP=2.5 are set up)" >&2; exit 1

kfp-venv: $(KFP_ENV)

kfp-roundtrip: setup $(KFP_ENV)
	$(PY) -m tests.kfp_roundtrip --kfp-python $(KFP_PY) $(ARGS)

## The serving environment of `deblur serve` (components/serving/, docs/serving.md): its own
## venv .venv-serve from requirements/serve.lock (kserve 0.21 pins protobuf 6, TFX 1.16 pins
## 3.20.3). `deblur serve` builds it on first use by running this target. The project's code
## reaches it by PYTHONPATH, so nothing of the project's is installed there.
SERVE_VENV := .venv-serve
$(SERVE_VENV)/.stamp: requirements/serve.lock | $(UV)
	@test -x "$(PY310)" || { echo "error: Python 3.10 not found (see make setup)" >&2; exit 1; }
	rm -rf $(SERVE_VENV)
	$(UV) venv --quiet --python "$(PY310)" $(SERVE_VENV)
	$(UV) pip install --python $(SERVE_VENV)/bin/python --quiet --compile-bytecode -r $<
	@touch $@

serve-venv: $(SERVE_VENV)/.stamp

## The serving load benchmark (benchmarks/serve_bench.py -> benchmarks/results/serve_bench.md).
serve-bench: setup $(SERVE_VENV)/.stamp
	$(PY) -m benchmarks.serve_bench $(ARGS)

## Re-resolve the locks from requirements/*.in within the measured reference set.
lock: $(UV)
	$(UV) pip compile --quiet --python-version 3.10 -c ../shared/reference/constraints-py310-tfx1.16.txt requirements/main.in -o requirements/main.lock
	$(UV) pip compile --quiet --python-version 3.10 -c ../shared/reference/constraints-py310-tfx1.16.txt requirements/test.in -o requirements/test.lock
	$(UV) pip compile --quiet --python-version 3.10 --python-platform x86_64-manylinux_2_28 -c requirements/main.lock requirements/gpu.in -o requirements/gpu.lock
	$(UV) pip compile --quiet --python-version 3.10 requirements/kfp217.in -o requirements/kfp217.lock
	$(UV) pip compile --quiet --python-version 3.10 requirements/serve.in -o requirements/serve.lock

clean:
	rm -rf $(VENV) .venv-kfp* $(SERVE_VENV) build *.egg-info
