# Two commands set everything up: `make run` (the instrument) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test bench install run clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: it is the local CPU build here, where an unpinned torch pulls CUDA wheels.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m bench.render

clean:
	rm -rf $(VENV) build *.egg-info
