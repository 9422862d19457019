# The two commands of the README: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test test-core demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,gcp,local,postgres]'
	touch $@

install: $(STAMP)

include mk/gcp.mk mk/cloudflare.mk mk/postgres.mk mk/bench.mk

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: install lint setup-gcp setup-cloudflare setup-postgres
	$(PY) -m pytest

demo: install
	$(PY) -m refluxo.local.demo

# Writes benchmarks/results/results.{md,json}; BENCH_ARGS=--quick for a fast look.
bench: install setup-gcp setup-cloudflare setup-postgres setup-bench
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean: clean-cloudflare
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build
