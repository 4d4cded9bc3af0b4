# comfy-fleet: the two commands users need are `make run` and `make test`; both set up what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK_VENV := .venv-lock
PIP_TOOLS_VERSION := 7.7.0
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
# The tests' own Ray runs without a token; `make run` turns Ray's token authentication on.
test test-unit bench: export RAY_AUTH_MODE := disabled

.PHONY: run test test-unit install lock migrate rebuild fold-snapshot reupload bench clean

install: $(STAMP)

# Everything installed is pinned by version and wheel hash in requirements.lock (made by `make lock`
# from pyproject.toml and clients/python, dev extra included, for Python 3.11 on Linux x86_64); the
# project and its Python client (clients/python) are then installed on top without resolving anything.
$(STAMP): pyproject.toml requirements.lock clients/python/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "comfy-fleet needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "python venv is missing: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip install --quiet --no-deps -e clients/python
	@touch $(STAMP)

# Regenerates requirements.lock after a change to pyproject.toml's dependencies. Pins already in the
# lock are kept when they still fit; `make lock LOCK_ARGS=--upgrade` moves everything to the newest.
lock:
	@test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet pip-tools==$(PIP_TOOLS_VERSION); }
	$(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --extra dev --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links $(LOCK_ARGS) -o requirements.lock pyproject.toml clients/python/pyproject.toml

run: install
	$(PY) -m comfy_fleet_devstack.run

test: install
	@./scripts/ensure-chromium
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

migrate: install
	$(PY) -m comfy_fleet.cli.migrate

# `make rebuild ARGS=--full` folds every task from its events alone, ignoring the fold snapshot.
rebuild: install
	$(PY) -m comfy_fleet.cli.rebuild $(ARGS)

# Brings the fold snapshot up to date now (safe while the service runs, which also does it every
# FOLD_SNAPSHOT_S).
fold-snapshot: install
	$(PY) -m comfy_fleet.cli.rebuild --snapshot-only $(ARGS)

reupload: install
	$(PY) -m comfy_fleet.cli.reupload $(ARGS)

BENCHMARKS := standin_bench hops throughput latency event_log scale router_scale ray_idle fairness autoscale soak

bench: install
	@for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(PY) -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) data/tmp
