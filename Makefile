# Two commands for a fresh clone with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint format bench clean

# The venv is rebuilt whenever the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: $(VENV)/.installed
	$(BIN)/python -m local.stack

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest

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
