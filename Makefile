# Two commands matter: `make run` and `make test`. Both install what they need
# from the lock files first, so a fresh clone on a bare machine works.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
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

$(VENV)/.runtime-installed: requirements/runtime.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements/runtime.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . \
	  || $(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.runtime-installed
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.txt
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

lint: install-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install-dev
	$(BIN)/mypy

bench: install-dev
	$(BIN)/python -m bench $(BENCH_ARGS)

# Regenerates the Python lock files (needs `uv`); commit the result.
lock:
	cd requirements && uv pip compile --quiet --generate-hashes --python-version 3.11 -o runtime.txt ../pyproject.toml
	cd requirements && uv pip compile --quiet --generate-hashes --python-version 3.11 --extra test --extra dev -o dev.txt ../pyproject.toml

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
