# Everything here needs only python3 (3.11+), git and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := install
.PHONY: install lock test test-fast bench sandbox sandbox-down lint demo demo-fleet stop deploy clean

install: $(STAMP)

# The lock is the whole environment: every package pinned with its hashes, installed with --no-deps
# so pip resolves nothing and a release published upstream after the lock can neither change nor
# break the install, whatever pip `python3 -m venv` brought. `pip check` then proves the lock
# consistent (a dependency missing from it fails here, not at run time). The project itself is an
# editable install, built with the lock's setuptools, so `deployctl` runs this checkout.
PIP := $(BIN)/python -m pip --disable-pip-version-check
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "python3 3.11 or newer is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-deps --require-hashes -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation --no-index -e .
	$(PIP) check
	touch $@

# Run after changing the dependencies in pyproject.toml, or to take upstream releases on purpose
# (`make lock UPGRADE=1`; `UPGRADE=httpx` for one package). Resolves for every Python from 3.11 on,
# Linux, macOS and Windows alike, and keeps every other pin as it is. It needs only the current lock's
# uv, not a consistent venv: a package just added to pyproject.toml is not in the lock yet.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(PIP) install --quiet --no-deps --require-hashes -r requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
	    --generate-hashes --custom-compile-command 'make lock' --output-file requirements.lock \
	    $(if $(filter 1,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE)))

# Four workers, one test file each at a time (module fixtures such as a sandbox stay in one process):
# most tests wait on servers, not on the CPU, so workers beyond the two cores fill their idle time
# (full runs on 2 cores: three workers took 930 and 936 s with 1.49-1.56 cores busy, four took 865, 880
# and 950 s with 1.60-1.67; earlier, two took 897-1004 s where three took 839 s; the CPU of a run varies
# by 10 %, 1386-1522 s). Files are handed out in the conftest's order, the longest first
# (--no-loadscope-reorder: xdist would sort them by their number of tests and leave the long e2e files
# for last). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The edit-test loop: every test that starts no server, sandbox or browser (the `slow` mark): about a
# minute on a fast 2-core machine, 3.5 on a slow one. `make test` runs them too.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow"

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

# The fleet's story: production on three hosts behind HAProxy (Debian's haproxy package), a worker each;
# a release that fails on its second batch rolled back across the fleet, then v2 rolled. `make stop` ends it.
demo-fleet: $(STAMP)
	$(BIN)/deployctl demo --hosts 3

# Server, work pool, every deployment of prefect.yaml and a worker; idempotent.
deploy: $(STAMP)
	$(BIN)/deployctl stack up

stop: $(STAMP)
	$(BIN)/deployctl stop

lint: $(STAMP)
	$(BIN)/python -m ruff check flows tasks deployments deployctl bench tests sample_app/sandbox.py sample_app/history.py

clean:
	-$(BIN)/deployctl stop
	rm -rf $(VENV) .sandbox .sandbox-fleet .state
