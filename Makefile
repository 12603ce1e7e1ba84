# Everything installs into .venv inside the repo, with the exact pins of constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

export PREFECT_HOME := $(CURDIR)/.prefect
# The telemetry switches are set in one place, bincount/core/telemetry.py (the CLI and tests apply it).

.PHONY: install install-dev demo ui-check test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/bincount demo

# Screenshots of the demo's training, evaluation and scoring artifacts in the Prefect UI, with
# headless Chromium from the distribution (skipped with a message where there is none).
ui-check: install
	$(BIN)/python bench/ui_check.py --prefect-home $(PREFECT_HOME) --out ui-check

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest --durations=15   # the slowest tests, named at the end

bench: install-dev
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/review.py

clean:
	rm -rf $(VENV) .prefect .pytest_cache .ruff_cache demo-output ui-check
