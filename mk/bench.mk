# What `make bench` needs beyond the test set-up (included from the top Makefile).
#
#   make setup-bench   tsx for the vs_typescript section (npm ci in benchmarks/ts) and
#                      DBOS Transact for the vs_dbos section (.tools/dbos-venv)
#
# The TypeScript engine itself is not installed: the section reads its source from
# ../shared/anchors/refluxo-engine (or $REFLUXO_TS_ENGINE) and says so when it is absent.

BENCH_TS_DIR   := benchmarks/ts
BENCH_TS_STAMP := $(BENCH_TS_DIR)/node_modules/.refluxo-npm-ci.stamp

.PHONY: setup-bench

setup-bench: $(BENCH_TS_STAMP)

$(BENCH_TS_STAMP): $(BENCH_TS_DIR)/package-lock.json $(BENCH_TS_DIR)/package.json
	@command -v node >/dev/null || { echo "setup-bench: node (>= 20) is required" >&2; exit 1; }
	cd $(BENCH_TS_DIR) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# DBOS Transact for the vs_dbos section, in an environment of its own: its pins (SQLAlchemy,
# psycopg...) never meet the project's. Re-made when the pin below changes.
DBOS_VERSION := 3.4.0
DBOS_VENV    := .tools/dbos-venv
DBOS_STAMP   := $(DBOS_VENV)/.refluxo-dbos-$(DBOS_VERSION).stamp

setup-bench: $(DBOS_STAMP)

$(DBOS_STAMP):
	rm -rf $(DBOS_VENV)
	$(or $(PYTHON),python3) -m venv $(DBOS_VENV)
	$(DBOS_VENV)/bin/python -m pip install --quiet 'dbos==$(DBOS_VERSION)'
	touch $@
