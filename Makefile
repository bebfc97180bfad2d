# Two commands for a fresh machine (see README):
#   make demo   -- install, then run the end-to-end pipeline on generated audio
#   make test   -- install, then run the test suite
#   make lint   -- install, then check the code with ruff (its rules are in pyproject.toml)
#
# Where it installs: into the active virtual environment (or conda environment) if there is one;
# otherwise into a project-local one, $(VENV), created on first use. Systems whose Python is
# "externally managed" (PEP 668: Debian 12, Ubuntu 24.04, ...) refuse `pip install` into the
# system Python, so a newcomer without an environment gets one instead of an error. The local
# environment sees the system's site-packages, so packages already installed there are reused.
PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?= tests

ifneq ($(VIRTUAL_ENV)$(CONDA_PREFIX),)
ENV_PYTHON := $(PYTHON)
ENV_READY :=
else
ENV_PYTHON := $(VENV)/bin/python
ENV_READY := $(VENV)/bin/python
endif
PIP := $(ENV_PYTHON) -m pip

.PHONY: install test lint demo

$(VENV)/bin/python:
	@echo "make: no virtual environment is active: creating $(VENV) with $(PYTHON) and installing lodit into it"
	@$(PYTHON) -m venv --system-site-packages $(VENV) || { \
	  echo "make: could not create $(VENV): install Python's venv module (e.g. apt install python3-venv) or activate an environment first"; \
	  rm -rf $(VENV); exit 1; }

install: $(ENV_READY)
	@echo "make: installing into $$($(ENV_PYTHON) -c 'import sys; print(sys.prefix)')"
	$(PIP) install --quiet "torch==2.13.0" || $(PIP) install --quiet "torch>=2.4,<2.14"
	$(PIP) install --quiet -e ".[all]"

test: install
	$(ENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(ENV_PYTHON) -m ruff check .

demo: install
	$(ENV_PYTHON) -m lodit.cli demo --out demo_out
