# Two commands do all the set-up on a fresh machine:
#   make demo   - the whole platform on embedded defaults, in the foreground
#   make test   - install what the tests need and run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip
STAMP   = $(VENV)/.installed

.PHONY: demo demo-check test lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall when any package definition or pin changes.
$(STAMP): $(BIN)/python constraints.txt requirements-dev.txt shared/pyproject.toml etl-service/pyproject.toml api-service/pyproject.toml
	$(PIP) install --quiet -c constraints.txt -e shared -e etl-service -e api-service -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

demo-check: $(STAMP)
	$(BIN)/python scripts/demo.py --check

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shared/analytics_shared etl-service/etl_service api-service/api_service

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
