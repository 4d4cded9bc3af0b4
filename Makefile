# comfy-fleet: the two commands users need are `make run` and `make test`; both set up what is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
# The tests' own Ray runs without a token; `make run` turns Ray's token authentication on.
test test-unit bench: export RAY_AUTH_MODE := disabled

.PHONY: run test test-unit install migrate rebuild reupload bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-s3.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "comfy-fleet needs Python 3.11 or newer")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "python venv is missing: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-s3.txt
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: install
	$(PY) -m comfy_fleet_devstack.run

test: install
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

migrate: install
	$(PY) -m comfy_fleet.cli.migrate

rebuild: install
	$(PY) -m comfy_fleet.cli.rebuild

reupload: install
	$(PY) -m comfy_fleet.cli.reupload $(ARGS)

BENCHMARKS := standin_bench throughput latency event_log scale ray_idle soak

bench: install
	@for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(PY) -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) data/tmp
