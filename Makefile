# Two commands matter: `make run` and `make test`. Both install what they need
# from the lock files first, so a fresh clone on a bare machine works.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
export WMILL_CLI ?= $(CURDIR)/node_modules/windmill-cli/esm/main.js
export DATA_DIR  ?= $(CURDIR)/data

.PHONY: run test install install-dev system-deps test-system-deps lint typecheck bench lock clean

# Debian packages the service needs. No git: it speaks Git in-process (dulwich).
system-deps:
	@command -v node >/dev/null && command -v npm >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm ca-certificates; }

# ... and those only the tests need: git serves the test repositories
# (http-backend) and checks what was pushed; Chromium renders the status page.
test-system-deps: system-deps
	@command -v git >/dev/null && command -v chromium >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends git chromium fonts-dejavu-core; }

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The build tools come from their own lock first, so the editable install of
# the package is one step that builds offline and prints nothing alarming.
$(VENV)/.runtime-installed: requirements/build.txt requirements/runtime.txt setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) --require-hashes -r requirements/build.txt
	$(PIP) --require-hashes -r requirements/runtime.txt
	$(PIP) --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.runtime-installed
	$(PIP) --require-hashes -r requirements/dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: system-deps $(VENV)/.runtime-installed node_modules/.installed

install-dev: install test-system-deps $(VENV)/.dev-installed

# Runs the service in the foreground with the same entry point as the image.
run: install
	$(BIN)/windmill-git-sync serve

test: install-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# actionlint checks the CI workflow, hadolint the Dockerfile; both are binaries
# from the dev lock file (no download of their own).
lint: install-dev
	$(BIN)/ruff check gitsync tests bench
	$(BIN)/ruff format --check gitsync tests bench
	$(BIN)/actionlint .github/workflows/*.yml
	$(BIN)/hadolint Dockerfile

typecheck: install-dev
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerates the Python lock files from setup.cfg (needs `uv`); commit the result.
LOCK := uv pip compile --quiet --generate-hashes --python-version 3.11
lock:
	cd requirements && $(LOCK) -o build.txt build.in
	cd requirements && $(LOCK) -o runtime.txt ../setup.cfg
	cd requirements && $(LOCK) --extra test --extra dev -o dev.txt ../setup.cfg

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
