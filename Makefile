# One install path: `make setup` creates .venv from pyproject.toml (all pins live there).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

train: setup
	$(BIN)/python train.py $(ARGS)

# The default suite is the whole suite (about 18 minutes on 2 cores): CI must exercise resume after SIGKILL,
# 2-process DDP and the experiment presets end to end. `make test-fast` skips the tests marked slow (~4 minutes).
test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .cache
