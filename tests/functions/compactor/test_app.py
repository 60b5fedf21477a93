"""The compactor function's handler, invoked as Lambda invokes it: the sample schedule event in
functions/compactor/events/, settings from the environment, and a context whose time runs out;
against a real redis-server (the locks) and moto's in-process S3."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from functions.compactor import app
from shared import metrics, status
from shared.archive import ObjectStore, compaction, reading
from shared.archive.partitions import HourRange
from shared.settings import Settings
from tests import archives
from tests.conftest import settings_env

SCHEDULED = Path(app.__file__).parent / "events" / "scheduled.json"
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


class Context:
    """A Lambda context whose remaining time is `plenty` ms for `calls` calls, then 1 s."""

    def __init__(self, calls: int = 10**6, plenty: int = 900_000) -> None:
        self.calls, self.plenty = calls, plenty

    def get_remaining_time_in_millis(self) -> int:
        self.calls -= 1
        return self.plenty if self.calls >= 0 else 1000


@pytest.fixture
def environment(settings: Settings, s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    app.compactor.cache_clear()
    yield
    app.compactor.cache_clear()


def stamp(hour: datetime, minute: int) -> str:
    return (hour + timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def write(s3: Any, settings: Settings, hours_ago: int, ids: list[str], entry: int) -> None:
    hour = NOW - timedelta(hours=hours_ago)
    events = [archives.ev(m, stamp(hour, i), "e", "u") for i, m in enumerate(ids)]
    store = ObjectStore(s3, settings.s3_bucket)
    archives.write_ndjson(store, settings.s3_prefix, [(f"{entry}-0".encode(), events)])


def listed(s3: Any, settings: Settings) -> list[reading.ArchivedObject]:
    """Every archived object, raw and compacted, of every root."""
    return reading.list_objects(
        ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, HourRange()
    )


def keys_by_hour(s3: Any, settings: Settings) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for item in listed(s3, settings):
        found.setdefault(f"{item.dt}T{item.hour:02d}", []).append(item.key.rsplit("/", 1)[1])
    return found


def label(hours_ago: int) -> str:
    return (NOW - timedelta(hours=hours_ago)).strftime("%Y-%m-%dT%H")


@pytest.mark.usefixtures("environment")
def test_compacts_the_closed_hours_of_the_last_week(s3: Any, settings: Settings) -> None:
    write(s3, settings, 9 * 24, ["old"], 1)  # beyond the scheduled look-back
    write(s3, settings, 3, ["a", "b"], 2)
    write(s3, settings, 3, ["b", "c"], 3)  # a retry of b, later in the same hour
    write(s3, settings, 2, ["c", "d"], 4)  # a retry of c in the next hour
    write(s3, settings, 0, ["e"], 5)  # this hour: still open

    summary = app.handler(json.loads(SCHEDULED.read_text()), Context())

    assert summary == {
        "hours_compacted": 2,
        "hours_unchanged": 0,
        "hours_partial": 0,
        "hours_busy": 0,
        "hours_failed": 0,
        "hours_left": 0,
        "events_read": 6,
        "events_written": 4,
        "duplicates_dropped": 2,
        "objects_written": 2,
        "objects_removed": 3,
        "steps": 4,
        "out_of_time": False,
        "errors": [],
        "unreadable_objects": 0,
        "lag_s": 0.0,  # every closed hour compacted
        "oldest_hour": None,
    }
    assert json.loads(json.dumps(summary)) == summary  # what Lambda returns
    hours = keys_by_hour(s3, settings)
    assert [name.startswith("compacted-") for name in hours[label(3)]] == [True]
    assert [name.startswith("compacted-") for name in hours[label(2)]] == [True]
    assert [name.startswith("compacted-") for name in hours[label(0)]] == [False]
    assert [name.startswith("compacted-") for name in hours[label(9 * 24)]] == [False]


@pytest.mark.usefixtures("environment")
def test_stops_before_its_time_ends_and_the_next_invocation_resumes(
    s3: Any, settings: Settings
) -> None:
    for hours_ago in range(2, 8):
        write(s3, settings, hours_ago, [f"m{hours_ago}", "shared"], hours_ago)
    event = json.loads(SCHEDULED.read_text())

    first = app.handler(event, Context(calls=4))

    assert first["out_of_time"] is True
    assert first["hours_compacted"] + first["hours_partial"] < 6
    assert first["hours_left"] > 0
    invocations = [first]
    while invocations[-1]["out_of_time"]:
        invocations.append(app.handler(event, Context(calls=4)))
        assert len(invocations) < 20
    assert sum(i["hours_compacted"] for i in invocations) == 6
    names = [n for keys in keys_by_hour(s3, settings).values() for n in keys]
    assert len(names) == 6 and all(n.startswith("compacted-") for n in names)
    ids = []
    for item in listed(s3, settings):
        ids += reading.read_object(ObjectStore(s3, settings.s3_bucket), item)[
            "message_id"
        ].to_pylist()
    assert sorted(ids) == [f"m{h}" for h in range(2, 8)] + ["shared"]  # kept in its first hour
    assert compaction.Compactor.from_settings(settings).survey() == []


def emf_lines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the handler prints as EMF from now on (the counts of earlier tests left out)."""
    lines: list[str] = []
    emitter = metrics.EmfEmitter(lines.append, enabled=True)
    emitter.emit()
    lines.clear()
    monkeypatch.setattr(app, "_emf", emitter)
    return lines


def emf_values(lines: list[str]) -> dict[str, float]:
    """Each metric's value, by name (each line holds one)."""
    found = {}
    for line in lines:
        document = json.loads(line)
        [directive] = document["_aws"]["CloudWatchMetrics"]
        [metric] = directive["Metrics"]
        found[metric["Name"]] = document[metric["Name"]]
    return found


@pytest.mark.usefixtures("environment")
def test_a_failed_hour_fails_the_invocation_once_the_others_are_done(
    s3: Any, settings: Settings, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the error (here a damaged work record: JSONDecodeError), the hour fails alone,
    the invocation ends in an error naming it (Lambda's Errors metric, CompactorErrorsAlarm),
    its counts and lag go out as EMF, and its report to Redis."""
    write(s3, settings, 4, ["a"], 1)
    write(s3, settings, 3, ["b"], 2)
    write(s3, settings, 2, ["c"], 3)
    damaged = f"{settings.s3_prefix}_compaction/work/dt={label(3)[:10]}/hour={label(3)[11:]}/"
    s3.put_object(Bucket=settings.s3_bucket, Key=f"{damaged}plan.json", Body=b"{")
    emitted = emf_lines(monkeypatch)

    with pytest.raises(app.CompactionFailed) as failed:
        app.handler(json.loads(SCHEDULED.read_text()), Context())

    assert str(failed.value).startswith(
        f"1 of 3 hours failed (the next run retries them): {label(3)}: JSONDecodeError: "
    )
    hours = keys_by_hour(s3, settings)
    assert [name.startswith("compacted-") for name in hours[label(4)]] == [True]
    assert [name.startswith("compacted-") for name in hours[label(3)]] == [False]
    assert [name.startswith("compacted-") for name in hours[label(2)]] == [True]
    values = emf_values(emitted)
    assert values["event_ingest_compaction_hours_compacted_total"] == 2
    assert values["event_ingest_compaction_hours_failed_total"] == 1
    assert values["event_ingest_compaction_events_read_total"] == 2
    assert values["event_ingest_compaction_events_written_total"] == 2
    assert values["event_ingest_compaction_failed_hours"] == 1
    assert values["event_ingest_compaction_unreadable_objects"] == 0
    closed = NOW - timedelta(hours=2) + timedelta(seconds=settings.compact_grace_s)
    lag = (datetime.now(UTC) - closed).total_seconds()
    assert lag - 60 < values["event_ingest_compaction_lag_seconds"] <= lag
    report = status.read_compaction_report(redis_client, settings.stream_key)
    assert [(f.hour, f.error.split(":")[0]) for f in report.failed] == [
        (label(3), "JSONDecodeError")
    ]
    assert report.oldest_hour == label(3)


def test_the_compactor_never_loads_duckdb() -> None:
    """Its Lambda bundle holds pyarrow; DuckDB beside it would pass the 250 MB limit."""
    probe = "import sys, functions.compactor.app; print('duckdb' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr
