# Everything here needs only python3 (3.11+), git and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := install
.PHONY: install test bench sandbox sandbox-down lint demo stop deploy clean

install: $(STAMP)

# The lock pins every package with its hashes; the project itself is an editable
# install so `deployctl` runs this checkout.
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "python3 3.11 or newer is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Two workers, one test file each at a time (module fixtures such as a sandbox stay in one process):
# most tests wait on servers, not on the CPU. TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# Minutes of measuring, never part of `make test`; BENCH="backups" runs only the scripts named.
bench: $(STAMP)
	$(BIN)/python bench/run $(BENCH)

sandbox: $(STAMP)
	$(BIN)/deployctl sandbox up

sandbox-down: $(STAMP)
	$(BIN)/deployctl sandbox down

# The story on the sandbox with a real Prefect server and worker; leaves the UI up. `make stop` ends it.
demo: $(STAMP)
	$(BIN)/deployctl demo

# Server, work pool, every deployment of prefect.yaml and a worker; idempotent.
deploy: $(STAMP)
	$(BIN)/deployctl stack up

stop: $(STAMP)
	$(BIN)/deployctl stop

lint: $(STAMP)
	$(BIN)/python -m ruff check flows tasks deployments deployctl bench tests sample_app/sandbox.py sample_app/history.py

clean:
	-$(BIN)/deployctl stop
	rm -rf $(VENV) .sandbox .state
