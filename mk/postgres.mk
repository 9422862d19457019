# PostgreSQL for the tests and the benchmark (included from the top Makefile).
#
#   make setup-postgres   install Debian's postgresql package when its server binaries
#                         (initdb, postgres) are missing.
#
# Nothing is started here: tests/postgres/server.py starts a throwaway cluster of its own
# (initdb in a temporary directory, a free loopback port) and stops it at the end; a server
# already running on the machine is never used.

.PHONY: setup-postgres

setup-postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update && apt-get install -y postgresql; }
