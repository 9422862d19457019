# The two commands of the README: `make demo` and `make test`. Both set up what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lint test test-core demo bench clean setup-browser screenshots

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

test: install lint setup-gcp setup-cloudflare setup-postgres setup-browser
	$(PY) -m pytest

# The dashboard's browser tests drive Debian's chromium (Playwright with the system browser);
# chromium-driver serves WebDriver clients. Installed only when missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
setup-browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends \
			chromium chromium-driver; }

# Writes the dashboard's screenshots shown in the README (docs/dashboard/*.png).
screenshots: install setup-browser
	$(PY) -m tests.local.screenshots docs/dashboard

demo: install
	$(PY) -m refluxo.demo

# Writes benchmarks/results/results.{md,json}; BENCH_ARGS=--quick for a fast look.
bench: install setup-gcp setup-cloudflare setup-postgres setup-bench
	$(PY) -m benchmarks.run $(BENCH_ARGS)

clean: clean-cloudflare
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache build
