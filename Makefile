# make serve  - install what is needed and run the service on :8000 (GPU if the machine has one, else CPU)
# make test   - install and run the whole test suite (local Ray, CPU, the project's own test models)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-12)
export PIP_CACHE_DIR ?= $(CURDIR)/$(VENV)/.pip-cache
export PYTHONUNBUFFERED := 1

.PHONY: install serve test test-model bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	# torch first, pinned: the CPU wheel on this machine's disk (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,bench]'
	rm -f $(VENV)/.installed-*
	touch $@

serve: install
	$(PY) -m deployments.preflight serve_config.yaml
	$(VENV)/bin/serve run serve_config.yaml

test: install
	$(PY) -m pytest -v

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
