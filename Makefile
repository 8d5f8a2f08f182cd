# Two commands do all the set-up on a fresh machine:
#   make demo   - the whole platform on embedded defaults, in the foreground
#                 (installs only the three packages the services need)
#   make test   - install what the tests need too and run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
PIP     = $(BIN)/python -m pip
STAMP   = $(VENV)/.installed
SERVICES_STAMP = $(VENV)/.installed-services

.PHONY: demo demo-check test lint typecheck install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall when any package definition or pin changes. The services alone
# (the demo) skip the test toolchain: mypy, schemathesis, the S3 server binary.
$(SERVICES_STAMP): $(BIN)/python constraints.txt shared/pyproject.toml etl-service/pyproject.toml api-service/pyproject.toml
	$(PIP) install --quiet -c constraints.txt -e shared -e etl-service -e api-service
	touch $(SERVICES_STAMP)

$(STAMP): $(SERVICES_STAMP) requirements-dev.txt
	$(PIP) install --quiet -c constraints.txt -e shared -e etl-service -e api-service -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(SERVICES_STAMP)
	$(BIN)/python scripts/demo.py

demo-check: $(SERVICES_STAMP)
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
