# keras-interbert: `make quickstart` (the main job) and `make test` (the suite
# under the TensorFlow, JAX and PyTorch backends). Both create .venv if needed.
# `make install` installs the package alone (what the quickstart and the
# recipes need); `make install-test` adds the test extras (JAX, PyTorch,
# transformers and the reference packages), which every test target uses.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
# The session that runs the checks marked `once` (independent of the backend:
# pipelines, files, processes that pick their own backend) when several
# sessions run: PyTorch's, whose own tests cost the least CPU time
# (tests/conftest.py; with them it now ends last, about 75 s after
# TensorFlow's, docs/benchmarks.md, eleventh pass).
ONCE_BACKEND ?= $(if $(filter torch,$(BACKENDS)),torch,$(firstword $(BACKENDS)))
TEST_NICE ?= 3
QUICKSTART_ARGS ?=

.PHONY: install install-test test test-serial test-long test-tensorflow test-jax test-torch quickstart benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# Each stamp is redone whenever pyproject.toml changes.
$(VENV)/.installed-main: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-main
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed-main

install-test: $(VENV)/.installed-test

# The three backends run at the same time (each in its own pytest process,
# with its own temporary folder and log); the logs are printed in order when
# all have finished. Much of the suite waits on single-threaded work (imports,
# subprocesses, compilation), which overlaps well even on two cores (see
# docs/benchmarks.md). `make test-serial` runs them one after the other.
# The TensorFlow session holds the most work (its learning tests), so the
# other sessions run at a lower priority (`nice -n $(TEST_NICE)`): the
# cores go to it first and to them whenever it leaves one idle, and it no
# longer ends alone on the cores (docs/benchmarks.md, eleventh pass).
# `make test TEST_NICE=0` runs all three at the same priority.
# `make test TEST_CPU=1` also records each test's CPU time in
# .test-runs/BACKEND.cpu.tsv (tests/conftest.py); summarise them with
# benchmarks/suite_cpu_report.py.
test: install-test
	@rm -rf .test-runs; mkdir -p .test-runs; \
	for backend in $(BACKENDS); do \
	  case $$backend in tensorflow) nice=0;; *) nice=$(TEST_NICE);; esac; \
	  ( KERAS_BACKEND=$$backend INTERBERT_ONCE_BACKEND=$(ONCE_BACKEND) \
	      $(if $(TEST_CPU),INTERBERT_TEST_CPU=$(CURDIR)/.test-runs/$$backend.cpu.tsv) \
	      nice -n $$nice $(BIN)/python -m pytest -q -p no:cacheprovider --durations=12 \
	      --basetemp=.test-runs/tmp-$$backend $(PYTEST_ARGS) \
	      > .test-runs/$$backend.log 2>&1; echo $$? > .test-runs/$$backend.status ) & \
	done; wait; status=0; \
	for backend in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$backend"; cat .test-runs/$$backend.log; \
	  [ "$$(cat .test-runs/$$backend.status)" = 0 ] || status=1; \
	done; \
	for backend in $(BACKENDS); do \
	  echo "KERAS_BACKEND=$$backend: $$(tail -n 1 .test-runs/$$backend.log)"; \
	done; exit $$status

test-serial: install-test
	@status=0; for backend in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$backend"; \
	  KERAS_BACKEND=$$backend INTERBERT_ONCE_BACKEND=$(ONCE_BACKEND) \
	    $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) || status=1; \
	done; exit $$status

# The long learning run that `make test` keeps to TensorFlow (ITM from
# scratch, tests/test_pretraining_learning.py), under JAX and PyTorch, with
# the rest of that file (about 15 minutes on two cores).
test-long: install-test
	@status=0; for backend in jax torch; do \
	  echo "=== KERAS_BACKEND=$$backend (INTERBERT_LONG_TESTS=1)"; \
	  INTERBERT_LONG_TESTS=1 KERAS_BACKEND=$$backend $(BIN)/python -m pytest -q -s -p no:cacheprovider \
	    tests/test_pretraining_learning.py $(PYTEST_ARGS) || status=1; \
	done; exit $$status

test-%: install-test
	KERAS_BACKEND=$* $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

quickstart: install
	KERAS_BACKEND=tensorflow $(BIN)/python recipes/quickstart.py $(QUICKSTART_ARGS)

benchmark: install-test
	$(BIN)/python benchmarks/training_throughput.py --configs tiny small published

clean:
	rm -rf $(VENV) reports runs .test-runs
