"""Fixtures of the fault-injection suite, and the table of figures it prints at the end.

Every scenario gets its own pipeline of real processes (`start_pipeline`), so it can kill
and restart any of them without disturbing other tests, and reports one row of figures
(`report`) that `pytest_terminal_summary` prints as a table after the run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.harness import Figures, Pipeline

ROWS = pytest.StashKey[list[Figures]]()
COLUMNS = (
    ("scenario", "{:<25}"),
    ("accepted", "{:>8}"),
    ("archived", "{:>8}"),
    ("lost", "{:>4}"),
    ("duplicates", "{:>10}"),
    ("503s", "{:>5}"),
    ("dead letters", "{:>12}"),
    ("seconds", "{:>7.1f}"),
    ("notes", "{}"),
)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    """Add a scenario's row to the table printed at the end of the session."""
    rows = request.config.stash.setdefault(ROWS, [])
    return rows.append


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


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    terminalreporter.write_sep("=", "fault injection: events accepted vs archived")
    header = [fmt.replace(".1f", "").format(name) for name, fmt in COLUMNS]
    terminalreporter.write_line("  ".join(header).rstrip())
    for row in rows:
        values = (
            row.scenario,
            row.accepted,
            row.archived,
            row.lost,
            row.duplicates,
            row.unavailable,
            row.dead_letters,
            row.seconds,
            row.notes,
        )
        cells = [fmt.format(value) for (_, fmt), value in zip(COLUMNS, values, strict=True)]
        terminalreporter.write_line("  ".join(cells).rstrip())
