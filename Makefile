# Set-up and checks. `make test` and `make demo` install into .venv first when needed (idempotent:
# the stamp is rebuilt only when the package metadata or the pinned stack changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.merge-proxy-installed
PYTEST_ARGS ?=

.PHONY: install test demo benchmark clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/merge-proxy demo

benchmark: install
	$(PY) benchmarks/merge_speed.py

clean:
	rm -rf build dist plugin/*.egg-info .pytest_cache
