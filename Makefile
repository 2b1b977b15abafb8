# keras-interbert: `make quickstart` (the main job) and `make test` (the suite
# under the TensorFlow, JAX and PyTorch backends). Both create .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=
QUICKSTART_ARGS ?=

.PHONY: install test test-tensorflow test-jax test-torch quickstart benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# Reinstalls whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

test: install
	@status=0; for backend in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$backend"; \
	  KERAS_BACKEND=$$backend $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) || status=1; \
	done; exit $$status

test-%: install
	KERAS_BACKEND=$* $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

quickstart: install
	KERAS_BACKEND=tensorflow $(BIN)/python recipes/quickstart.py $(QUICKSTART_ARGS)

benchmark: install
	$(BIN)/python benchmarks/training_throughput.py --configs tiny small published

clean:
	rm -rf $(VENV) reports runs
