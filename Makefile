# One command each: make demo | make test | make lint | make bench
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ownlm-installed

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

# torch first, pinned to the CPU build on this machine's disk, so that the project's
# `torch>=2.4` range is already satisfied and no multi-GB CUDA build is pulled.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/ownlm demo

# pytest exits 5 when it collected no test: make treats that as a failure, as it should.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/serve_mixed.py

clean:
	rm -rf $(VENV) runs .cache
