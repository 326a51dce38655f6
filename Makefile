# `make run` starts the app, `make test` runs every test. Each creates .venv when it is missing and
# installs only what changed since the last call (stamp files inside .venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# uv installs what pip would, from the same indexes, in a third of the time (it unpacks and compiles on every
# core). It reads no pip configuration, so the extra indexes pip is given (a machine's wheels on disk, torch among
# them) are handed on; and it takes each pin's best match across all indexes, as pip does, not the first index's.
UV_VERSION := 0.13.9
PIP_EXTRA_INDEXES = $(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null)
UV := $(VENV)/bin/uv
PIP = $(UV) pip install --quiet --python $(PY) --native-tls --compile-bytecode \
	--index-strategy unsafe-best-match $(addprefix --extra-index-url ,$(PIP_EXTRA_INDEXES))
# A real xformers wheel built for another torch: it imports, then fails at its first call.
# The attention tests use it, from its own folder, never from .venv's site-packages.
BROKEN_XFORMERS := xformers==0.0.35

# The gpu-marked tests need CUDA and no browser or Streamlit: .venv's Python where there is one, else the
# machine's own (a GPU box with torch, diffusers and ultralytics installed).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))

# The edit loop: every test but those that start servers, drive the browser, use Ray or reach the package index.
FAST := not (server or browser or ray or network or slow or gpu)
KAGGLE_WHEELS := $(VENV)/kaggle-wheels

.PHONY: run test test-fast lint test-gpu clean

# uv itself, into .venv (also into one made before the project used it); an order-only prerequisite below, so
# that its own file time never counts as a change.
$(UV):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.app-installed: requirements.txt requirements-nodeps.txt | $(UV)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-nodeps.txt
	touch $@

# The browser test drives Debian's Chromium (Playwright cannot download its own browser here); the notebook test's
# Kaggle-like Python has the GUI OpenCV, which needs libGL as on Kaggle.
$(VENV)/.test-installed: $(VENV)/.app-installed requirements-test.txt | $(UV)
	$(PIP) -r requirements-test.txt -c requirements.txt
	$(PIP) --no-deps --target $(VENV)/broken-xformers $(BROKEN_XFORMERS)
	test -x /usr/bin/chromium && ldconfig -p | grep -q libGL.so.1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium libgl1; }
	touch $@

# The wheels the notebook's install cell adds to a Kaggle image, downloaded once; the notebook test installs from
# them alone (tests/kaggle_env.py says which).
$(KAGGLE_WHEELS)/.filled: $(VENV)/.test-installed requirements_kaggle.txt tests/kaggle_env.py
	$(PY) tests/kaggle_env.py $(KAGGLE_WHEELS)
	touch $@

# The upload limit comes from the app's own settings parser (a bad MAX_UPLOAD_MB stops here, named).
run: $(VENV)/.app-installed
	size=$$($(PY) -m studio.core.settings STREAMLIT_UPLOAD_MB) && $(PY) -m streamlit run studio/serving/server.py --server.maxUploadSize $$size

# Two pytest processes at once, each held to half the cores (tests/lanes.py says how the files are split and why).
test: $(VENV)/.test-installed $(KAGGLE_WHEELS)/.filled lint
	$(PY) tests/lanes.py

test-fast: $(VENV)/.test-installed lint
	$(PY) -m pytest -m "$(FAST)"

lint: $(VENV)/.test-installed
	$(PY) -m ruff check .

test-gpu:
	$(GPU_PYTHON) -m pytest -m gpu -p no:cacheprovider -rA tests/test_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache
