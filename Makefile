# The two quick-start commands: `make demo` (whole pipeline on the built-in dataset) and
# `make test`. Both create or reuse the virtual environment in .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CPU    := --config configs/cpu.yaml
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONUNBUFFERED := 1

.PHONY: venv demo data test clean-demo

venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# Data foundation: built-in dataset -> 2.5D cache -> patient folds.
data: venv
	$(PY) make_phantom.py $(CPU)
	$(PY) prepare.py $(CPU)
	$(PY) make_folds.py $(CPU)

demo: data

test: venv
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf input/luna16 input/cache folds/folds.csv outputs/cpu
