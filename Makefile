# make serve  - install what is needed and run the service on :8000 (GPU if the machine has one, else CPU)
# make test   - install and run the whole test suite (local Ray, CPU, the project's own test models)
SHELL := /bin/bash
# The interpreter for .venv: 3.11 (what CI runs), else 3.12 (Ubuntu 24.04's) or 3.10; torch 2.13, NeMo 3.0 and Ray 2.60
# publish wheels for all three. Another one: make serve PYTHON=/path/to/python3.x
PYTHON ?= $(firstword $(foreach p,python3.11 python3.12 python3.10,$(shell command -v $(p) 2>/dev/null)))
# Prometheus text at http://<node>:METRICS_PORT/metrics (Ray's metrics export port; the cluster manifests use 8080)
METRICS_PORT ?= 8080
# What takes connections on the service's port: auto (HAProxy where a binary is found; ray[serve] brings one on Linux),
# haproxy or proxy (Ray Serve's proxy actor); unset: $$PARAKEET_INGRESS, else auto (deployments/front_door.py)
INGRESS ?=
# Extras installed beside the service: the tests' and the benchmark's (the container image sets EXTRAS= : serving only)
EXTRAS ?= [test,bench]
# torch first, pinned (configs/docker/Dockerfile installs through this Makefile, so the image has these same pins)
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
export PIP_CACHE_DIR ?= $(CURDIR)/$(VENV)/.pip-cache
export PYTHONUNBUFFERED := 1

.PHONY: install serve test lint test-model bench bench-quick wheelhouse install-offline clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || test -n "$(PYTHON)" || { echo "No python3.11, python3.12 or python3.10 found. Install one" \
	  "(Debian/Ubuntu: apt-get install python3.12 python3.12-venv) or pass PYTHON=/path/to/python3.x"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "Cannot create $(VENV): on Debian/Ubuntu install" \
	  "the venv module (apt-get install python3-venv, or python3.X-venv for your version)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip wheel
	# an unpinned torch would pull another build than the one the project is tested with
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.$(EXTRAS)'
	rm -f $(VENV)/.installed-*
	touch $@

# The preflight, a one-node Ray with its metrics on METRICS_PORT, the app on it; Ctrl-C stops both (deployments/launch.py)
serve: install
	$(PY) -m deployments.launch serve_config.yaml --metrics-port $(METRICS_PORT) $(if $(INGRESS),--ingress $(INGRESS))

test: install lint
	$(PY) -m pytest -v

# pyflakes and pycodestyle's errors (pyproject's [tool.ruff.lint]) over everything the repository holds
lint: install
	$(PY) -m ruff check deployments tests bench tools

# An offline install for machines without a registry: `make wheelhouse` (where there is one) collects the wheels the
# service needs to serve into WHEELHOUSE, for WHEEL_PYTHON / WHEEL_PLATFORM (default: this machine's; e.g.
# WHEEL_PYTHON=3.12 WHEEL_PLATFORM=manylinux_2_28_x86_64); copy the repository with it, then `make install-offline`
# there builds $(VENV) from it with no index, and `make serve` runs as usual.
WHEELHOUSE ?= wheelhouse
wheelhouse: install
	$(PY) -m tools.wheelhouse build --out $(WHEELHOUSE) $(if $(WHEEL_PYTHON),--python $(WHEEL_PYTHON)) \
	  $(if $(WHEEL_PLATFORM),--platform $(WHEEL_PLATFORM))

install-offline:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	PIP_NO_INDEX=1 $(PY) -m tools.wheelhouse install $(WHEELHOUSE) --python $(PY)
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Re-train tests/fixtures/digits.nemo (~20 min on 2 cores; needs espeak-ng: apt-get install espeak-ng)
test-model: install
	@command -v espeak-ng >/dev/null || { echo "espeak-ng is needed: apt-get install -y espeak-ng"; exit 1; }
	$(PY) -m tests.fixtures.maker.train

bench: install
	$(PY) -m bench.run

bench-quick: install
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) build *.egg-info
