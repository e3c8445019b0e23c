# The two set-up commands of README.md: `make demo` (end to end on generated data) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?=
WORKDIR ?= demo_output

.PHONY: demo test test-all venv clean

venv: $(STAMP)

$(STAMP): setup.py setup.cfg
	$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  $(PYTHON) -c 'import sys; sys.exit("automedsam needs Python 3.10+: make $(MAKECMDGOALS) PYTHON=python3.X" if sys.version_info < (3, 10) else 0)' \
	  && rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/automedsam_demo --workdir $(WORKDIR) $(if $(DATA),--hc18 $(DATA),)

clean:
	rm -rf $(WORKDIR) .pytest_cache
