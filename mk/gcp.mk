# Google Cloud test infrastructure (included from the top Makefile).
#
#   make setup-gcp   install gcloud-tasks-emulator into its own venv, make the
#                    Cloud Function's venv, and check that the Firestore emulator
#                    (Java) is installed.
#
# gcloud-tasks-emulator 0.6.2 pins protobuf<5 and google-cloud-tasks<3, so it
# lives in .tools/tasks-emulator/, never in the project venv. tests/gcp/emulators.py
# finds it there (or via $REFLUXO_TASKS_EMULATOR / PATH).

GCP_TOOLS_PYTHON ?= $(or $(PYTHON),python3)
TASKS_EMULATOR_VERSION := 0.6.2
TASKS_EMULATOR_VENV := .tools/tasks-emulator
# The version is in the stamp's name: changing it reinstalls.
TASKS_EMULATOR_STAMP := $(TASKS_EMULATOR_VENV)/.installed-gcloud-tasks-emulator-$(TASKS_EMULATOR_VERSION)

# The end-to-end test serves the deployment bundle from a venv that holds only
# deploy/gcp/requirements.txt (what Cloud Functions installs), never the project:
# a module the bundle lacks then fails the test instead of coming from the repo.
GCP_FUNCTION_VENV := .tools/gcp-function
GCP_FUNCTION_STAMP := $(GCP_FUNCTION_VENV)/.installed

.PHONY: setup-gcp setup-tasks-emulator setup-gcp-function check-firestore-emulator

setup-gcp: setup-tasks-emulator setup-gcp-function check-firestore-emulator

setup-tasks-emulator: $(TASKS_EMULATOR_STAMP)

$(TASKS_EMULATOR_STAMP):
	$(GCP_TOOLS_PYTHON) -m venv --clear $(TASKS_EMULATOR_VENV)
	$(TASKS_EMULATOR_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		'gcloud-tasks-emulator==$(TASKS_EMULATOR_VERSION)'
	$(TASKS_EMULATOR_VENV)/bin/python -W ignore -c 'import gcloud_tasks_emulator.server'
	test -x $(TASKS_EMULATOR_VENV)/bin/gcloud-tasks-emulator
	touch $@

setup-gcp-function: $(GCP_FUNCTION_STAMP)

# Stamped on the requirements: changing them rebuilds the venv from scratch.
$(GCP_FUNCTION_STAMP): deploy/gcp/requirements.txt
	$(GCP_TOOLS_PYTHON) -m venv --clear $(GCP_FUNCTION_VENV)
	$(GCP_FUNCTION_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		-r deploy/gcp/requirements.txt
	test -x $(GCP_FUNCTION_VENV)/bin/functions-framework
	touch $@

# The Firestore emulator cannot come from PyPI: it ships with the Cloud SDK.
# The lookup (PATH, the SDK next to gcloud, `gcloud info`, `dpkg -L`) is the
# one the tests use; on failure it prints how to install the emulator.
check-firestore-emulator:
	@launcher=$$($(GCP_TOOLS_PYTHON) tests/gcp/emulators.py locate-firestore) || { \
		echo "setup-gcp: the Firestore emulator is missing (see above)." >&2; exit 1; }; \
	echo "Firestore emulator: $$launcher"
