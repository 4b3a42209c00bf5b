# The two commands: `make run` and `make test`. Both work on a fresh Debian machine
# with only Python 3.11: they create .venv, install torch (CPU, pinned) first, then
# the project, and only redo an install when pyproject.toml or the pins change.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every pip call below (and every build environment pip creates) honours the pins.
export PIP_CONSTRAINT := $(CURDIR)/config/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
DEPS_HASH := $(shell cat pyproject.toml config/constraints.txt | sha1sum | cut -c1-12)
RUNTIME_STAMP := $(VENV)/.runtime-$(DEPS_HASH)
TEST_STAMP := $(VENV)/.test-$(DEPS_HASH)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install install-test browser bench clean

run: $(RUNTIME_STAMP)
	$(BIN)/tuneloop up

test: $(TEST_STAMP) browser
	@# pytest exits 5 when it collected no test: that must fail, loudly.
	@set +e; $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

install: $(RUNTIME_STAMP)
install-test: $(TEST_STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, on its own: the CPU wheel, so nothing later can pull a CUDA build.
$(RUNTIME_STAMP): $(BIN)/python pyproject.toml config/constraints.txt
	$(BIN)/pip install --progress-bar on torch==2.13.0
	$(BIN)/pip install --progress-bar on -e .
	touch $@

$(TEST_STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --progress-bar on -e '.[test]'
	touch $@

# Browser tests drive Debian's Chromium; a test tool's own browser download fails here.
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

bench: $(TEST_STAMP)
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) .pytest_cache
