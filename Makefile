# Set-up and checks. `make test` and `make demo` install into .venv first when needed (idempotent:
# the stamp is rebuilt only when the package metadata or the pinned stack changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.merge-proxy-installed
PYTEST_ARGS ?=

.PHONY: install test demo benchmark check-ranges clean

install: $(STAMP)

# The torch wheels are CUDA builds (about 7 GB installed). pip keeps every downloaded wheel until the
# whole install ends, so torch and its NVIDIA libraries go in first, one package per pip call, without
# pip's cache: the disk peak stays near the installed size instead of installed + downloaded + cached.
# (Bytecode is compiled at install, 0.5 GB: where PYTHONDONTWRITEBYTECODE is set, as here, every
# process would otherwise recompile every module it imports.)
# pip's downloads and build trees go to a folder beside the venv (same disk, whatever /tmp is).
PIP_TMP := $(abspath $(VENV))/.pip-tmp
PIP_INSTALL := TMPDIR=$(PIP_TMP) $(PY) -m pip install --quiet --no-cache-dir -c constraints.txt
HEAVY := $(shell sed -n -E 's/^((nvidia-[a-z0-9-]+|triton|torch|torchvision|torchaudio)==.*)$$/\1/p' constraints.txt)

# Measured peak of a fresh install: 9.2 GiB (8.8 GiB stay), plus room for the tests' files. Checked up
# front so that a short disk is named at once instead of as ENOSPC in the middle of pip.
NEED_MIB ?= 9600

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@if [ ! -x $(PY) ] && ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "make install: $(PYTHON) is Python $$($(PYTHON) -V 2>&1 | cut -d' ' -f2), merge-proxy needs 3.11 or newer" \
	    "(LLaMA-Factory 0.9.5 does too); run make PYTHON=python3.11 (or newer)." >&2; \
	  exit 1; \
	fi
	@if [ ! -x $(PY) ]; then \
	  free=$$(df -Pk "$(dir $(abspath $(VENV)))" | awk 'NR==2 {print int($$4 / 1024)}'); \
	  if [ "$$free" -lt $(NEED_MIB) ]; then \
	    echo "make install: $$free MiB free under $(dir $(abspath $(VENV))), the pinned stack needs about $(NEED_MIB) MiB" \
	      "(torch's CUDA wheels). Free disk space there, or set VENV=/a/larger/disk/venv." >&2; \
	    exit 1; \
	  fi; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	mkdir -p $(PIP_TMP)
	TMPDIR=$(PIP_TMP) $(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	for req in $(HEAVY); do $(PIP_INSTALL) --no-deps "$$req" || exit 1; done
	$(PIP_INSTALL) -e ".[dev]"
	rm -rf $(PIP_TMP)
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/merge-proxy demo

benchmark: install
	$(PY) benchmarks/merge_speed.py

# What users get: the wheel with setup.cfg's ranges (not constraints.txt) in a fresh venv, the pairs
# pip picks printed, torch's companions loaded, then the demo. Not part of `make test` (a second stack
# of about 7 GB, about 10 minutes); run it when a range or a release of the stack changes.
RANGES_VENV ?= /tmp/merge-proxy-ranges
check-ranges: install
	rm -rf $(RANGES_VENV)
	$(PYTHON) -m venv $(RANGES_VENV)
	$(PY) -m pip wheel --no-deps --no-build-isolation --quiet -w $(RANGES_VENV)/dist .
	mkdir -p $(RANGES_VENV)/.pip-tmp
	TMPDIR=$(RANGES_VENV)/.pip-tmp $(RANGES_VENV)/bin/python -m pip install --quiet --no-cache-dir --upgrade pip
	TMPDIR=$(RANGES_VENV)/.pip-tmp $(RANGES_VENV)/bin/python -m pip install --quiet --no-cache-dir \
	  "$$(ls $(RANGES_VENV)/dist/merge_proxy-*.whl)[llamafactory,lmms-eval]"
	rm -rf $(RANGES_VENV)/.pip-tmp
	$(RANGES_VENV)/bin/python -c "import importlib.metadata as m; \
	  print(*(f'{p} {m.version(p)}' for p in ('torch', 'torchvision', 'torchaudio', 'transformers', 'peft', \
	  'accelerate', 'huggingface_hub', 'datasets', 'trl', 'llamafactory', 'lmms_eval')), sep='\n'); \
	  import torch, torchvision, torchaudio, llamafactory.data.mm_plugin, lmms_eval"
	cd $(RANGES_VENV) && bin/merge-proxy demo --scale small --out demo-out

clean:
	rm -rf build dist plugin/*.egg-info .pytest_cache
