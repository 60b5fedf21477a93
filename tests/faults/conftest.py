"""Fixtures of the fault-injection suite.

Every scenario gets its own pipeline of real processes (`start_pipeline`), so it can kill
and restart any of them without disturbing other tests, and reports one row of figures
(`report`) that tests/conftest.py prints as a table after the run.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import FAULT_FIGURES
from tests.faults.harness import Figures, Pipeline


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    """Add a scenario's row to the table printed at the end of the session. The row travels
    in the test's report, which pytest-xdist brings back from the worker that ran it."""

    def add(figures: Figures) -> None:
        request.node.user_properties.append((FAULT_FIGURES, dataclasses.asdict(figures)))

    return add


@pytest.fixture
def seed() -> int:
    """The seed of a scenario's random choices (kill moments, batch sizes): FAULT_SEED=n
    replays them, though not the processes' timing."""
    value = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(10**6))
    print(f"FAULT_SEED={value}")
    return value


@pytest.fixture
def start_pipeline(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    """`start_pipeline(**env)` starts Redis, moto, gunicorn (no runner); all stop afterwards.
    `redis_server` and `redis_url` give it a Redis of the test's own instead."""
    started: list[Pipeline] = []

    def start(redis_server=None, redis_url=None, **env: str) -> Pipeline:
        directory = tmp_path / f"pipeline-{len(started)}"
        pipeline = Pipeline.start(directory, redis_server, redis_url, **env)
        started.append(pipeline)
        return pipeline

    yield start
    for pipeline in started:
        pipeline.stop()
