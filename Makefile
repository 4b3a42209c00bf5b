# The two commands: `make run` and `make test`. Both work on a fresh Debian machine with only Python 3.11:
# they create .venv, install torch (the CPU build, pinned) first, then every other package from the lock in
# config/ (exact versions, sha256-checked, transitive included), and only redo an install when the lock changes.
# `make lock` regenerates the lock on purpose (README, "Development").
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
RUNTIME_LOCK := config/requirements.lock
TEST_LOCK := config/requirements-test.lock
export PIP_DISABLE_PIP_VERSION_CHECK := 1
DEPS_HASH := $(shell cat pyproject.toml $(RUNTIME_LOCK) $(TEST_LOCK) | sha1sum | cut -c1-12)
RUNTIME_STAMP := $(VENV)/.runtime-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.test-$(DEPS_HASH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The lock is installed as it is: --no-deps because it already names every package, --require-hashes so a
# file that changed on the registry is refused, --no-build-isolation so tuneloop is built with the locked setuptools.
PIP_LOCKED := $(BIN)/python -m pip install --progress-bar on --require-hashes --no-deps
UV := $(VENV)-lock/bin/uv
UV_COMPILE := $(UV) pip compile --quiet --python-version 3.11 --generate-hashes --no-emit-package torch \
	--find-links /opt/wheels --custom-compile-command "make lock"

.PHONY: run test lint install install-test browser postgres node bench lock clean

run: $(RUNTIME_STAMP)
	$(BIN)/tuneloop up

# One pytest-xdist worker per core (CI has two), each taking whole test files; which worker takes which, and in
# what order: tests/plugins/scheduling.py (the starter model is built once, by the worker that runs its files).
PYTEST_ARGS ?= -n auto --dist loadfile
test: $(TEST_STAMP) browser postgres node lint
	@# pytest exits 5 when it collected no test: that must fail, loudly.
	@set +e; $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The rules and why: pyproject.toml, [tool.ruff]. `ruff format .` fixes what the format check finds.
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

install: $(RUNTIME_STAMP)
install-test: $(TEST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, on its own: the CPU wheel, so nothing later can pull a CUDA build. The lock leaves it out
# (the Dockerfile picks CPU or CUDA), and pyproject.toml pins it exactly.
define install_from
	$(BIN)/python -m pip install --progress-bar on $(TORCH)
	$(PIP_LOCKED) -r $(1)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
endef

$(RUNTIME_STAMP): $(BIN)/python pyproject.toml $(RUNTIME_LOCK)
	$(call install_from,$(RUNTIME_LOCK))
	touch $@

# The test lock is a superset of the runtime one (same versions), so this also serves `make run`.
$(TEST_STAMP): $(BIN)/python pyproject.toml $(TEST_LOCK)
	$(call install_from,$(TEST_LOCK))
	touch $@ $(RUNTIME_STAMP)

# Regenerate both locks from pyproject.toml: the test lock first, then the runtime lock constrained to it so a
# package shared by both has one version. To upgrade one package: make lock UPGRADE="--upgrade-package NAME".
lock: $(UV)
	$(UV_COMPILE) $(UPGRADE) pyproject.toml config/build-requirements.in --extra test -o $(TEST_LOCK)
	$(UV_COMPILE) pyproject.toml config/build-requirements.in -c $(TEST_LOCK) -o $(RUNTIME_LOCK)

$(UV):
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet uv==0.13.9

# Browser tests drive Debian's Chromium; a test tool's own browser download fails here.
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# The storage tests run on SQLite and on a throw-away PostgreSQL server (tests/plugins/postgres.py) started from
# Debian's binaries under /usr/lib/postgresql; only the binaries are needed, the package's own cluster is not used.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends postgresql; }

# The JavaScript clients and tools the tests drive (tests/node/package.json: the Vercel AI SDK, axe-core), at the
# locked versions (package-lock.json, integrity-checked by npm ci); reinstalled only when the lock changes.
NODE_STAMP := tests/node/node_modules/.package-lock.json
node: $(NODE_STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends nodejs npm; }
	npm ci --prefix tests/node --no-audit --no-fund
	touch $@

bench: $(TEST_STAMP)
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) $(VENV)-lock .pytest_cache
