# Two commands matter: `make run` and `make test`. Both install what they need
# from the lock files first, so a fresh clone on a bare machine works.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check
export WMILL_CLI ?= $(CURDIR)/node_modules/windmill-cli/esm/main.js
export DATA_DIR  ?= $(CURDIR)/data

# Node and npm are the image's own (the Dockerfile's versions and integrity
# hashes), fetched from the npm registry and checked, not the machine's: the
# CLI is tested, benchmarked and run on the node it ships with.
dockerfile_arg = $(shell sed -n 's/^ARG $(1)=//p' Dockerfile)
NODE_ARCH    := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x64)
NODE_VERSION := $(call dockerfile_arg,NODE_VERSION)
NPM_VERSION  := $(call dockerfile_arg,NPM_VERSION)
NODE_HOME    := $(CURDIR)/.node/$(NODE_VERSION)
NPM_REGISTRY ?= https://registry.npmjs.org/
export PATH  := $(NODE_HOME)/bin:$(PATH)

.PHONY: run test install install-dev system-deps test-system-deps lint typecheck bench lock clean

# What the service needs from the machine: Python, CA certificates and the
# pinned node. No git: it speaks Git in-process (dulwich).
system-deps: $(NODE_HOME)/.installed
	@test -e /etc/ssl/certs/ca-certificates.crt \
	  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends ca-certificates; }

# The same fetch-and-check as the Dockerfile's.
FETCH := $(PYTHON) -c 'import base64, hashlib, sys, urllib.request; \
url, integrity, out = sys.argv[1:]; \
data = urllib.request.urlopen(url, timeout=600).read(); \
algo, _, want = integrity.partition("-"); \
got = base64.b64encode(hashlib.new(algo, data).digest()).decode(); \
sys.exit(f"{url}: integrity {algo}-{got}, expected {integrity}") if got != want else None; \
open(out, "wb").write(data)'

$(NODE_HOME)/.installed: Dockerfile
	rm -rf $(NODE_HOME) && mkdir -p $(NODE_HOME)/bin $(NODE_HOME)/npm
	$(FETCH) $(NPM_REGISTRY:%/=%)/node-linux-$(NODE_ARCH)/-/node-linux-$(NODE_ARCH)-$(NODE_VERSION).tgz \
	  $(call dockerfile_arg,NODE_INTEGRITY_$(shell echo $(NODE_ARCH) | tr a-z A-Z)) $(NODE_HOME)/node.tgz
	$(FETCH) $(NPM_REGISTRY:%/=%)/npm/-/npm-$(NPM_VERSION).tgz \
	  $(call dockerfile_arg,NPM_INTEGRITY) $(NODE_HOME)/npm.tgz
	tar -xzf $(NODE_HOME)/node.tgz -C $(NODE_HOME)/bin --strip-components=2 package/bin/node
	tar -xzf $(NODE_HOME)/npm.tgz -C $(NODE_HOME)/npm --strip-components=1
	printf '#!/bin/sh\nexec "$(NODE_HOME)/bin/node" "$(NODE_HOME)/npm/bin/npm-cli.js" "$$@"\n' > $(NODE_HOME)/bin/npm
	chmod 0755 $(NODE_HOME)/bin/npm
	rm $(NODE_HOME)/node.tgz $(NODE_HOME)/npm.tgz
	touch $@

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

node_modules/.installed: package.json package-lock.json $(NODE_HOME)/.installed
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
	rm -rf $(VENV) .node node_modules .pytest_cache .mypy_cache .ruff_cache
