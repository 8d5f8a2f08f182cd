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
TS      = clients/typescript
TS_STAMP = $(TS)/node_modules/.installed
CONSOLE = console
CONSOLE_STAMP = $(CONSOLE)/node_modules/.installed
# The lake mode's processes run DuckDB 1.5.5 with the DuckLake extensions in an
# environment of their own (requirements-lake.txt); the services keep 2.0.1.
LAKE_VENV  ?= .venv-lake
LAKE_STAMP  = $(LAKE_VENV)/.installed
comma  := ,

.PHONY: demo demo-check test lint typecheck install clean ts-client browser lake-env mutation console

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall when any package definition or pin changes. The services alone
# (the demo) skip the test toolchain: mypy, schemathesis, the S3 server binary,
# the Python client and its data-frame extras.
$(SERVICES_STAMP): $(BIN)/python constraints.txt shared/pyproject.toml etl-service/pyproject.toml api-service/pyproject.toml
	$(PIP) install --quiet -c constraints.txt -e shared -e etl-service -e api-service
	touch $(SERVICES_STAMP)

$(STAMP): $(SERVICES_STAMP) requirements-dev.txt clients/python/pyproject.toml
	$(PIP) install --quiet -c constraints.txt -e shared -e etl-service -e api-service -e "clients/python[arrow,pandas,polars]" -r requirements-dev.txt
	touch $(STAMP)

# The TypeScript client's test toolchain (exact pins in its package.json, no
# lock file) and its build. Skipped with a warning where npm is missing; the
# tests that need it then skip and say so.
$(TS_STAMP): $(TS)/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(TS) && npm install --no-audit --no-fund --no-package-lock --loglevel=error && touch node_modules/.installed; \
	else echo "make: npm not found; the TypeScript client tests will skip" >&2; fi

ts-client: $(TS_STAMP)
	@if [ -x $(TS)/node_modules/.bin/tsc ]; then cd $(TS) && npm run --silent build; fi

# The web console (/console): pinned toolchain in console/package.json, built
# into api-service/api_service/console/static/. Without npm the API still
# starts and /console says the console was not built.
$(CONSOLE_STAMP): $(CONSOLE)/package.json
	@if command -v npm >/dev/null 2>&1; then \
	  cd $(CONSOLE) && npm install --no-audit --no-fund --no-package-lock --loglevel=error && touch node_modules/.installed; \
	else echo "make: npm not found; the console is not built (/console says so)" >&2; fi

console: $(CONSOLE_STAMP)
	@if [ -x $(CONSOLE)/node_modules/.bin/esbuild ]; then cd $(CONSOLE) && npm run --silent build; fi

# Debian's chromium + chromium-driver for tests/browser (as root, when missing).
browser:
	@sh scripts/install_browser.sh

$(LAKE_STAMP): requirements-lake.txt lake/pyproject.toml
	$(PYTHON) -m venv $(LAKE_VENV)
	$(LAKE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LAKE_VENV)/bin/python -m pip install --quiet -r requirements-lake.txt -e lake
	touch $(LAKE_STAMP)

lake-env: $(LAKE_STAMP)

install: $(STAMP)

demo: $(SERVICES_STAMP) console
	$(BIN)/python scripts/demo.py

demo-check: $(SERVICES_STAMP)
	$(BIN)/python scripts/demo.py --check

# The suite runs in two phases: most tests spread over TEST_WORKERS processes
# (pytest-xdist; they mostly wait on the servers they start), then the ones
# marked serial alone (memory cgroups at their limit, latency, browsers).
# PYTEST_ARGS runs just what it names, in one process.
TEST_WORKERS ?= 3
test: $(STAMP) $(LAKE_STAMP) ts-client console browser
ifeq ($(strip $(PYTEST_ARGS)),)
	@status=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not serial" || status=$$?; \
	$(BIN)/python -m pytest -m serial || { s=$$?; [ $$status -ne 0 ] || status=$$s; }; \
	exit $$status
else
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

# Mutation testing of the modules that hold the guarantees (docs/testing.md);
# long-running, not part of `make test`. MODULES=sql_guard,tokens runs some.
mutation: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -r requirements-mutation.txt
	$(BIN)/python scripts/mutation.py $(subst $(comma), ,$(MODULES))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shared/analytics_shared etl-service/etl_service api-service/api_service clients/python/analytics_client lake/analytics_lake

clean:
	rm -rf $(VENV) $(LAKE_VENV) var .pytest_cache .mypy_cache .ruff_cache $(TS)/node_modules $(TS)/dist \
	  $(CONSOLE)/node_modules api-service/api_service/console/static
