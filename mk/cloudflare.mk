# Cloudflare test harness (tests/cloudflare): Node packages and the wheels that
# Pyodide installs. Included by the top Makefile, which defines PY and VENV.
#
#   make setup-cloudflare   npm ci (when the lock changed) + Pyodide wheels (when the pins changed)
#   make test-cloudflare    the harness's own tests
#   make clean-cloudflare   remove both

CF_HARNESS_DIR     := tests/cloudflare/harness
CF_NPM_STAMP       := $(CF_HARNESS_DIR)/node_modules/.refluxo-npm-ci.stamp
CF_REQUIREMENTS    := tests/cloudflare/pyodide-requirements.txt
CF_WHEELS_DIR      := .tools/pyodide-wheels
CF_WHEELS_STAMP    := $(CF_WHEELS_DIR)/.refluxo-wheels.stamp
# Pyodide 314.0.7 = CPython 3.14, wheel platform pyemscripten_2026_0_wasm32.
CF_PYODIDE_PLATFORM := pyemscripten_2026_0_wasm32
CF_PYODIDE_PYTHON   := 3.14
# pip runs on the host only to download; any Python 3 with pip will do.
CF_PIP_PYTHON      ?= $(or $(PYTHON),python3)

.PHONY: setup-cloudflare test-cloudflare clean-cloudflare

setup-cloudflare: $(CF_NPM_STAMP) $(CF_WHEELS_STAMP)

# The stamp lives inside node_modules, so deleting node_modules re-runs npm ci.
# Install scripts are skipped: workerd ships its binary as a platform package
# and sharp (an unused Miniflare dependency) needs no build.
$(CF_NPM_STAMP): $(CF_HARNESS_DIR)/package-lock.json $(CF_HARNESS_DIR)/package.json
	@command -v node >/dev/null || { echo "setup-cloudflare: node (>= 20.3) is required" >&2; exit 1; }
	@node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<3)) { console.error("setup-cloudflare: node >= 20.3 required, found "+process.versions.node); process.exit(1) }'
	cd $(CF_HARNESS_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# Downloaded into a fresh directory that then replaces the old one, so wheels of
# old pins never linger (the harness installs every *.whl it finds).
$(CF_WHEELS_STAMP): $(CF_REQUIREMENTS)
	rm -rf $(CF_WHEELS_DIR).tmp
	$(CF_PIP_PYTHON) -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
		--platform $(CF_PYODIDE_PLATFORM) --python-version $(CF_PYODIDE_PYTHON) \
		-r $(CF_REQUIREMENTS) -d $(CF_WHEELS_DIR).tmp
	rm -rf $(CF_WHEELS_DIR)
	mv $(CF_WHEELS_DIR).tmp $(CF_WHEELS_DIR)
	touch $@

test-cloudflare: install setup-cloudflare
	$(PY) -m pytest tests/cloudflare -m external_service

clean-cloudflare:
	rm -rf $(CF_HARNESS_DIR)/node_modules $(CF_WHEELS_DIR) $(CF_WHEELS_DIR).tmp
