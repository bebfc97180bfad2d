# Two commands for a fresh machine (see README):
#   make demo   -- install, then run the end-to-end pipeline on generated audio
#   make test   -- install, then run the test suite
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip

.PHONY: install test demo

install:
	$(PIP) install --quiet "torch==2.13.0" || $(PIP) install --quiet "torch>=2.4"
	$(PIP) install --quiet -e ".[all]"

test: install
	$(PYTHON) -m pytest -q tests

demo: install
	lodit demo --out demo_out
