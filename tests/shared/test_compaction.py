"""Compaction against moto's in-process S3 and a real redis-server (the locks).

Inputs are written by the real writers (`tests.archives`: gzip NDJSON through `Buffer` and
`ObjectStore`, Parquet through `columns.to_rows`), with duplicates across objects, hours and
days. `view` (tests/shared/compacting.py) is what `event-ingest query` answers. Compaction
killed at each change is tested in test_compaction_kills.py and test_compaction_release.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from shared import shards, status
from shared.archive import ObjectStore, columns, compaction, naming, partitions
from shared.archive.compaction import dedup, plan, steps
from shared.archive.naming import ROOTS, Part, compacted_part
from shared.archive.partitions import HourRange, hour_label
from shared.settings import ConfigError, Settings
from tests import archives
from tests.archives import Client, ev
from tests.conftest import settings_env
from tests.fresh_process import in_a_fresh_process
from tests.shared.compacting import (
    HOURS,
    NOW,
    SMALL,
    archive_keys,
    assert_fully_compacted,
    at,
    listed,
    make,
    objects,
    rows,
    store_of,
    view,
    write_busy_hours,
)


@pytest.fixture
def store(s3: Any, settings: Settings) -> ObjectStore:
    return store_of(s3, settings)


# --- the rules --------------------------------------------------------------------------------


def table(ordinal: int, *entries: tuple[str | None, str, int], source: str | None = "web"):
    """An input object's rows, at `ordinal` in key order; `n` tells the copies apart."""
    events = [ev(m, t, "e", "u", properties={"n": n}, source=source) for m, t, n in entries]
    for event in events:
        if event["messageId"] is None:
            del event["messageId"]
        if event["source"] is None:
            del event["source"]  # anonymous mode
    return dedup.with_order(columns.to_rows(events), ordinal)


def keys(*pairs: tuple[str | None, str]) -> pa.Table:
    """The `DEDUP_KEY` columns of copies stored before."""
    sources, ids = zip(*pairs, strict=True)
    return pa.table({"source": pa.array(sources, pa.string()), "message_id": pa.array(ids)})


def numbers(rows_: pa.Table) -> list[int]:
    return [json.loads(p)["n"] for p in rows_["properties"].to_pylist()]


def test_first_copies_earliest_then_order_and_every_row_without_an_id() -> None:
    rows_ = pa.concat_tables(
        [
            table(0, ("a", "13:20", 1), ("b", "13:10", 2), (None, "13:30", 3), ("c", "13:40", 4)),
            table(1, ("a", "13:05", 5), ("b", "13:10", 6), (None, "13:30", 7), ("c", "13:40", 8)),
        ]
    )
    kept = dedup.first_copies(rows_)
    # a: the earliest receivedAt (object 1); b and c: same receivedAt, the first object; both
    # rows without a message_id; sorted by receivedAt, then object.
    assert numbers(kept) == [5, 2, 3, 7, 4]
    assert kept["received_at"].to_pylist() == sorted(kept["received_at"].to_pylist())
    assert kept.schema == rows_.schema
    # What earlier hours already store goes, whichever copy would have won.
    dropped = dedup.first_copies(rows_, drop=keys(("web", "b"), ("web", "x"), ("app", "a")))
    assert numbers(dropped) == [5, 3, 7, 4]


def test_first_copies_are_per_source_and_message_id() -> None:
    rows_ = pa.concat_tables(
        [
            table(0, ("a", "13:05", 1), ("b", "13:05", 2), source="web"),
            table(1, ("a", "13:10", 3), ("a", "13:20", 4), source="backend"),
            table(2, ("a", "13:15", 5), ("a", "13:25", 6), ("b", "13:30", 7), source=None),
        ]
    )
    # One copy of each (source, message_id): anonymous events are one source of their own.
    assert numbers(dedup.first_copies(rows_)) == [1, 2, 3, 5, 7]
    # A copy stored before drops its own source's copies only, an anonymous one too.
    stored_before = keys(("backend", "a"), (None, "b"), ("other", "b"))
    assert numbers(dedup.first_copies(rows_, drop=stored_before)) == [1, 2, 5]


def test_parts_names_and_hashes() -> None:
    assert [plan.parts_for(n, 100) for n in (0, 1, 100, 101, 300, 401)] == [1, 1, 1, 2, 4, 8]
    key = naming.compacted_key("events/", at("2024-03-05T13"), Part(2, 4), b"body")
    assert key.startswith("events/compacted/dt=2024-03-05/hour=13/compacted-0002-of-0004-")
    assert key.endswith(".parquet")
    assert compacted_part(key) == Part(2, 4)
    assert compacted_part("events/dt=2024-03-05/hour=13/1-0_2-0_abc.parquet") is None
    ids = pa.array(["m1", "m2", None, "m3"])
    assert plan.part_of_ids(ids, 1) == [0, 0, 0, 0]
    # The same in another process (another hash seed); test_stable_names.py pins the parts.
    assert plan.part_of_ids(ids, 8) == in_a_fresh_process(plan.part_of_ids, ids, 8)
    assert all(0 <= p < 8 for p in plan.part_of_ids(ids, 8))
    assert plan.part_of_ids(ids, 8)[2] == 0


def test_parquet_bytes_depend_on_the_rows_alone() -> None:
    rows_ = table(0, ("a", "13:20", 1), ("b", "13:10", 2))
    split = pa.concat_tables([rows_.slice(0, 1), rows_.slice(1)])
    assert steps.parquet_bytes(rows_) == steps.parquet_bytes(split)


# --- compacting -------------------------------------------------------------------------------


@pytest.mark.parametrize("formats", ["ndjson", "parquet", "mixed"])
def test_each_event_stored_once_as_the_query_chose_it(
    s3: Any, settings: Settings, store: ObjectStore, formats: str
) -> None:
    archives.write_archive(store, settings.s3_prefix, formats)
    before = view(s3, settings)
    assert sum(before.values()) == archives.EVENTS

    summary = make(settings, s3).run()

    assert [h.hour for h in summary.hours] == HOURS
    assert {h.state for h in summary.hours} == {"compacted"}
    assert_fully_compacted(s3, settings, before)
    by_hour = Counter(row["_hour"] for row in rows(s3, settings))
    assert {tuple(h.split("T")): n for h, n in by_hour.items()} == {
        (day, f"{hour:02d}"): n for (day, hour), n in archives.BY_HOUR.items()
    }
    copies = {r["message_id"]: json.loads(r["properties"]).get("copy") for r in rows(s3, settings)}
    assert {m: copies[m] for m in archives.KEPT_COPY} == archives.KEPT_COPY
    totals = summary.as_dict()
    assert totals["events_read"] == archives.RAW_ROWS
    assert totals["events_written"] == totals["events_read"] - totals["duplicates_dropped"]
    assert totals["events_written"] == archives.EVENTS
    assert totals["objects_written"] == len(HOURS)


def test_compacted_objects_are_plain_sorted_zstd_parquet(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    archives.write_archive(store, settings.s3_prefix, "mixed")
    make(settings, s3).run()
    stored = objects(s3, settings)
    assert stored, "compaction left nothing to check"
    for key, body in stored.items():
        assert key.startswith(settings.s3_prefix + "compacted/dt=")
        parquet = pq.ParquetFile(io.BytesIO(body))
        assert parquet.schema_arrow == columns.SCHEMA  # no dt/hour inside
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
        received = parquet.read()["received_at"]
        assert received.type == pa.timestamp("us", tz="UTC")
        assert received.to_pylist() == sorted(received.to_pylist())
        head = s3.head_object(Bucket=settings.s3_bucket, Key=key)
        assert head["ContentType"] == "application/vnd.apache.parquet"


def test_compacted_hours_are_left_alone(s3: Any, settings: Settings, store: ObjectStore) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    compactor = make(settings, s3)
    compactor.run()
    before = objects(s3, settings)

    assert compactor.survey() == []
    summary = compactor.compact([at(label) for label in HOURS])

    assert {h.state for h in summary.hours} == {"unchanged"}
    assert objects(s3, settings) == before


def test_open_hours_wait_for_the_grace_period(s3: Any, settings: Settings, store: ObjectStore):
    archives.write_ndjson(store, settings.s3_prefix, [(b"1-0", [ev("a", "15:59", "e", "u")])])
    grace = timedelta(seconds=settings.compact_grace_s)
    just_before = at("2024-03-05T16") + grace - timedelta(seconds=1)

    assert make(settings, s3, now=just_before).run().hours == []
    with pytest.raises(ValueError, match="not closed yet"):
        make(settings, s3, now=just_before).compact([at("2024-03-05T15")])

    summary = make(settings, s3, now=just_before + timedelta(seconds=1)).run()
    assert [(h.hour, h.state) for h in summary.hours] == [("2024-03-05T15", "compacted")]


def test_late_objects_are_merged_on_the_next_run(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    compactor = make(settings, s3)
    compactor.run()
    untouched = {k: v for k, v in objects(s3, settings).items() if "hour=13" not in k}
    # A consumer that was down: a retry of m3 (later, loses) and a new event, in hour 13.
    late = [ev("m3", "13:40", "Page Viewed", "u1"), ev("m10", "13:41", "Signed Up", "u5")]
    archives.write_parquet(store, settings.s3_prefix, [(b"1709659999999-0", late)])
    expected = view(s3, settings)

    states = compactor.survey()
    assert [(s.label, s.raw_objects, s.compacted_objects) for s in states] == [
        ("2024-03-05T13", 1, 1)
    ]
    summary = compactor.run()

    # Then the later hours of the window, asked to check again: none holds m3 or m10.
    assert [(h.hour, h.state) for h in summary.hours] == [
        ("2024-03-05T13", "compacted"),
        ("2024-03-05T14", "unchanged"),
        ("2024-03-05T15", "unchanged"),
        ("2024-03-06T00", "unchanged"),
    ]
    assert_fully_compacted(s3, settings, expected)
    assert {k: v for k, v in objects(s3, settings).items() if "hour=13" not in k} == untouched


def test_a_late_earlier_copy_wins_and_the_later_hour_drops_its_own(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    # m20 first archived (and compacted) in hour 15; then the original, received in hour 13,
    # arrives late: the query now answers with hour 13's copy, and so must the archive.
    archives.write_ndjson(
        store, settings.s3_prefix, [(b"2-0", [ev("m20", "15:10", "e", "u", properties={"c": 2})])]
    )
    archives.write_ndjson(store, settings.s3_prefix, [(b"3-0", [ev("m21", "14:10", "e", "u")])])
    compactor = make(settings, s3)
    compactor.run()
    archives.write_ndjson(
        store, settings.s3_prefix, [(b"1-0", [ev("m20", "13:10", "e", "u", properties={"c": 1})])]
    )
    expected = view(s3, settings)

    hour_14 = {k: v for k, v in objects(s3, settings).items() if "hour=14" in k}
    summary = compactor.run()

    # Hour 13 merged; it asked the compacted hours of the window after it to check again,
    # which the same run did: hour 14 holds none of its IDs and is left as it was.
    assert [(h.hour, h.state) for h in summary.hours] == [
        ("2024-03-05T13", "compacted"),
        ("2024-03-05T14", "unchanged"),
        ("2024-03-05T15", "compacted"),
    ]
    assert {k: v for k, v in objects(s3, settings).items() if "hour=14" in k} == hour_14
    assert_fully_compacted(s3, settings, expected)
    assert [r["_hour"] for r in rows(s3, settings) if r["message_id"] == "m20"] == ["2024-03-05T13"]


def test_a_late_copy_of_an_id_from_another_source_leaves_the_later_hour_alone(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    # The backend's m20 compacted in hour 15; then a web event with the same ID arrives late in
    # hour 13: another event, not an earlier copy, so hour 15 keeps its own.
    backend = ev("m20", "15:10", "e", "u", source="backend")
    archives.write_ndjson(store, settings.s3_prefix, [(b"2-0", [backend])])
    compactor = make(settings, s3)
    compactor.run()
    web = ev("m20", "13:10", "e", "u", source="web")
    archives.write_ndjson(store, settings.s3_prefix, [(b"1-0", [web])])
    expected = view(s3, settings)
    hour_15 = {k: v for k, v in objects(s3, settings).items() if "hour=15" in k}

    summary = compactor.run()

    assert [(h.hour, h.state) for h in summary.hours] == [
        ("2024-03-05T13", "compacted"),
        ("2024-03-05T15", "unchanged"),  # checked again, read its keys only
    ]
    assert {k: v for k, v in objects(s3, settings).items() if "hour=15" in k} == hour_15
    assert_fully_compacted(s3, settings, expected)
    assert sorted((r["_hour"], r["source"]) for r in rows(s3, settings)) == [
        ("2024-03-05T13", "web"),
        ("2024-03-05T15", "backend"),
    ]


def test_the_dedup_window(s3: Any, settings: Settings, store: ObjectStore) -> None:
    settings = dataclasses.replace(settings, dedup_window_h=2)
    for entry, hour in enumerate(["10", "12", "13"]):
        stamp = f"2024-03-05T{hour}:30:00.000Z"
        archives.write_ndjson(
            store, settings.s3_prefix, [(f"{entry}-0".encode(), [ev("m", stamp, "e", "u")])]
        )

    make(settings, s3).run()

    # Hour 12 is 2 hours after 10: within the window, dropped. Hour 13 is 3 hours after 10
    # (outside) and 1 after 12 (where m is no longer stored): kept.
    assert sorted(r["_hour"] for r in rows(s3, settings)) == ["2024-03-05T10", "2024-03-05T13"]


# --- big hours: parts and steps -----------------------------------------------------------------


class Steps:
    """A budget that lets `steps` steps start, then runs out."""

    def __init__(self, steps: int) -> None:
        self.calls = 0
        self.steps = steps

    def __call__(self) -> int:
        self.calls += 1
        return 100_000 if self.calls <= self.steps + 2 else 0


def test_a_big_hour_is_cut_into_parts_by_message_id(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    write_busy_hours(store, settings.s3_prefix)
    expected = view(s3, settings)

    summary = make(settings, s3, **SMALL).run()

    assert_fully_compacted(s3, settings, expected)
    parts = [compacted_part(key) for key in archive_keys(s3, settings) if "hour=13" in key]
    assert len(parts) == parts[0].count > 1
    assert summary.hours[0].steps > parts[0].count + 1  # several split steps, then merges
    for row in rows(s3, settings):
        part = compacted_part(row["_key"])
        assert plan.part_of_ids(pa.array([row["message_id"]]), part.count) == [part.index]


def test_steps_resume_where_the_budget_ended_with_the_same_result(
    s3: Any, settings: Settings
) -> None:
    reference = archives.fresh_bucket(s3, settings)
    write_busy_hours(store_of(s3, reference), reference.s3_prefix)
    make(reference, s3, **SMALL).run()

    write_busy_hours(store_of(s3, settings), settings.s3_prefix)
    runs = []
    while not runs or runs[-1].out_of_time:
        runs.append(make(settings, s3, **SMALL).run(remaining_ms=Steps(2)))
        assert len(runs) < 30

    assert len(runs) > 5
    assert runs[0].as_dict()["hours_partial"] == 1
    assert objects(s3, settings) == objects(s3, reference)


def test_a_survey_changes_nothing(s3: Any, settings: Settings, store: ObjectStore) -> None:
    write_busy_hours(store, settings.s3_prefix)
    before = objects(s3, settings)
    states = make(settings, s3).survey()
    assert [(s.label, s.raw_objects, s.compacted_objects, s.in_progress) for s in states] == [
        ("2024-03-05T13", 8, 0, False),
        ("2024-03-05T14", 3, 0, False),
    ]
    assert states[0].bytes == sum(len(v) for k, v in before.items() if "hour=13" in k)
    assert objects(s3, settings) == before
    assert make(settings, s3).survey(HourRange(at("2024-03-05T14"))) == states[1:]


def test_a_survey_lists_each_root_once(s3: Any, settings: Settings, store: ObjectStore) -> None:
    """Each root's partitions are listed once a survey, however many roots there are (the
    staging prefix aside, which holds plans and requests, not events)."""
    write_busy_hours(store, settings.s3_prefix)
    roots = sorted(f"{settings.s3_prefix}{root}" for root in ROOTS)
    calls = archives.Calls(s3)
    assert make(settings, s3).survey()
    assert sorted(prefix for prefix, delimiter in calls.lists if prefix in roots) == roots
    # and nothing under a root is listed from another root's prefix (`parquet/parquet/`)
    assert all(prefix.count("parquet/") <= 1 for prefix, _ in calls.lists)


# --- determinism ------------------------------------------------------------------------------


def test_deterministic_names_and_bytes(s3: Any, settings: Settings) -> None:
    other = archives.fresh_bucket(s3, settings)
    for target in (settings, other):
        write_busy_hours(store_of(s3, target), target.s3_prefix)
        make(target, s3, **SMALL).run()
    assert objects(s3, settings) == objects(s3, other)


# --- failures ---------------------------------------------------------------------------------


class FailingIn(Client):
    """The S3 client, passed through, whose puts under some hours raise an error each."""

    def __init__(self, client: Any, errors: dict[str, BaseException]) -> None:
        super().__init__(client)
        self.errors = errors  # by partition (`dt=.../hour=.../`)

    def put_object(self, **kwargs: Any) -> Any:
        for partition, error in self.errors.items():
            if partition in kwargs["Key"]:
                raise error
        return super().put_object(**kwargs)


def test_an_error_of_any_type_fails_its_hour_only(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    errors = {
        "2024-03-05T13": EOFError("Compressed file ended before the end-of-stream marker"),
        "2024-03-05T14": KeyError("message_id"),
        "2024-03-05T15": ZeroDivisionError("division by zero"),
    }
    failing = FailingIn(s3, {partitions.partition_of(at(h)): e for h, e in errors.items()})
    before = {k: v for k, v in objects(s3, settings).items() if "dt=2024-03-05/" in k}

    summary = make(settings, s3, failing).run(report=True)

    states = {h.hour: h.state for h in summary.hours}
    assert states == {**dict.fromkeys(HOURS, "compacted"), **dict.fromkeys(errors, "failed")}
    why = {hour: f"{type(e).__name__}: {e}" for hour, e in errors.items()}
    assert summary.failures() == [f"{hour}: {reason}" for hour, reason in why.items()]
    assert {k: v for k, v in objects(s3, settings).items() if "dt=2024-03-05/" in k} == before
    # What is left is the lag: hour 13 closed COMPACT_GRACE_S after 14:00.
    assert summary.oldest_hour == "2024-03-05T13"
    assert summary.lag_s == (NOW - datetime(2024, 3, 5, 14, 15, tzinfo=UTC)).total_seconds()
    report = status.read_compaction_report(redis_client, settings.stream_key)
    assert report == summary.report
    assert report.failed == tuple(status.FailedHour(h, reason) for h, reason in why.items())
    assert (report.lag_s, report.oldest_hour, report.hours_compacted) == (
        summary.lag_s,
        "2024-03-05T13",
        2,
    )
    assert report.scope == "every closed hour" and report.unreadable_objects == 0
    ttl = redis_client.ttl(shards.compaction_report_key(settings.stream_key))
    assert 0 < ttl <= status.COMPACTION_REPORT_TTL_S

    summary = make(settings, s3).run(report=True)  # the next run resumes them

    states = {h.hour: h.state for h in summary.hours}
    assert {hour: states.pop(hour) for hour in errors} == dict.fromkeys(errors, "compacted")
    assert set(states.values()) <= {"compacted", "unchanged"}  # later hours checked again
    assert (summary.lag_s, summary.oldest_hour) == (0.0, None)
    report = status.read_compaction_report(redis_client, settings.stream_key)
    assert (report.failed, report.lag_s, report.oldest_hour) == ((), 0.0, None)


def test_only_a_run_asked_to_report_leaves_a_report(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    """A run over some hours knows nothing of the others' lag: it leaves the last report be."""
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    make(settings, s3).compact([at("2024-03-05T13")])
    make(settings, s3).run(HourRange(at("2024-03-05T14"), at("2024-03-05T14")))
    assert status.read_compaction_report(redis_client, settings.stream_key) is None


def test_the_report_counts_the_objects_set_aside_as_unreadable(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    aside = (
        f"{settings.s3_prefix}{naming.UNREADABLE_ROOT}{settings.s3_prefix}dt=2024-03-05/hour=14/"
    )
    for name in ("a.ndjson.gz", "b.parquet"):
        s3.put_object(Bucket=settings.s3_bucket, Key=f"{aside}{name}", Body=b"damaged")
        s3.put_object(Bucket=settings.s3_bucket, Key=f"{aside}{name}.reason.json", Body=b"{}")

    assert make(settings, s3).run(report=True).report.unreadable_objects == 2
    assert status.read_compaction_report(redis_client, settings.stream_key).unreadable_objects == 2


# --- the lock ---------------------------------------------------------------------------------


def test_a_locked_hour_is_skipped_and_left_alone(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    held = make(settings, s3).locks.acquire(at("2024-03-05T14"))
    before = {k: v for k, v in objects(s3, settings).items() if "hour=14" in k}

    summary = make(settings, s3).run()

    assert summary.as_dict()["hours_busy"] == 1
    assert [h.hour for h in summary.hours if h.state == "busy"] == ["2024-03-05T14"]
    assert {k: v for k, v in objects(s3, settings).items() if "hour=14" in k} == before
    held.release()
    summary = make(settings, s3).run()
    assert summary.hours[0].hour == "2024-03-05T14"
    assert summary.hours[0].state == "compacted"


def test_the_lease_is_a_setting_of_30_s_by_default() -> None:
    assert Settings().compact_lease_s == Settings.from_env({}).compact_lease_s == 30.0
    assert Settings.from_env({"COMPACT_LEASE_S": "1.5"}).compact_lease_s == 1.5
    with pytest.raises(ConfigError, match="COMPACT_LEASE_S"):
        Settings.from_env({"COMPACT_LEASE_S": "0"})


def test_the_lease_is_renewed_while_its_run_lives(
    s3: Any, settings: Settings, store: ObjectStore
) -> None:
    """A step three leases long keeps its hour: nobody else takes it, and the step's run
    finishes it (a lease that ran out would fail it with LockLost)."""
    settings = dataclasses.replace(settings, compact_lease_s=0.75)
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    hour = at("2024-03-05T13")
    meanwhile = []

    def slow_merge(progress: compaction.Progress) -> None:
        if progress.step.startswith("merge"):
            for _ in range(3):
                time.sleep(settings.compact_lease_s)
                meanwhile.append(make(settings, s3).compact([hour]).hours[0].state)

    assert make(settings, s3).compact([hour], progress=slow_merge).hours[0].state == "compacted"
    assert meanwhile == ["busy"] * 3


KILLED_RUN = """
import sys, time
from shared.archive.compaction import Compactor
from shared.archive.partitions import parse_hour
from shared.settings import Settings

def stop_in_merge(progress):
    if progress.step.startswith("merge"):
        print("merging", flush=True)
        time.sleep(600)  # until killed, the plan written and the lease held

hour = parse_hour(sys.argv[1])
Compactor.from_settings(Settings.from_env()).compact([hour], progress=stop_in_merge)
"""


def test_a_killed_runs_hour_is_compacted_one_lease_later(
    settings: Settings, moto_endpoint: str, http_s3: Any
) -> None:
    lease_s = 1.0
    settings = dataclasses.replace(settings, s3_endpoint_url=moto_endpoint, compact_lease_s=lease_s)
    archives.write_archive(store_of(http_s3, settings), settings.s3_prefix, "ndjson")
    expected = view(http_s3, settings)
    hour = at("2024-03-05T13")
    env = settings_env(settings, COMPACT_LEASE_S=str(lease_s))
    run = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, hour_label(hour)], env=env, stdout=subprocess.PIPE
    )
    try:
        assert run.stdout.readline() == b"merging\n"
        time.sleep(1.5 * lease_s)  # alive, it renews its lease: the hour stays its own
        assert make(settings, http_s3).compact([hour]).hours[0].state == "busy"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    killed_at = datetime.now(UTC)

    busy = make(settings, http_s3).compact([hour]).hours[0]

    assert busy.state == "busy"
    until = datetime.fromisoformat(busy.busy_until)
    assert until <= killed_at + timedelta(seconds=lease_s + 1)  # + rounding up to the second
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.05)
    assert make(settings, http_s3).compact([hour]).hours[0].state == "compacted"
    assert view(http_s3, settings) == expected
    hour_13 = [item.key for item in listed(http_s3, settings) if item.hour == 13]
    assert hour_13 and all(compacted_part(key) for key in hour_13)


def test_a_run_that_lost_its_lock_removes_nothing(
    s3: Any, settings: Settings, store: ObjectStore, redis_client: redis.Redis
) -> None:
    archives.write_archive(store, settings.s3_prefix, "ndjson")
    compactor = make(settings, s3)
    key = compactor.locks.key(at("2024-03-05T13"))
    raw = [k for k in objects(s3, settings) if "hour=13" in k]

    def steal(progress: compaction.Progress) -> None:
        if progress.step == "commit":  # it expired, and another run took it
            redis_client.set(key, "another run's token")

    summary = compactor.compact([at("2024-03-05T13")], progress=steal)

    assert summary.hours[0].state == "failed"
    assert "LockLost" in summary.hours[0].error
    assert redis_client.get(key) == b"another run's token"  # not released by the loser
    assert all(k in objects(s3, settings) for k in raw)
    redis_client.delete(key)
    assert compactor.run().hours[0].state == "compacted"


def test_two_runs_at_once_never_work_on_one_hour_together(
    s3: Any, settings: Settings, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_busy_hours(store, settings.s3_prefix)
    archives.write_archive(store, settings.s3_prefix, "mixed")
    expected = view(s3, settings)
    guard, working, together = threading.Lock(), set(), []
    locked_run = steps.HourRun.run  # runs while its run holds the hour's lock

    def watched_run(self: steps.HourRun) -> None:
        with guard:
            if self.hour in working:
                together.append(self.hour)
            working.add(self.hour)
        try:
            locked_run(self)
        finally:
            with guard:
                working.discard(self.hour)

    monkeypatch.setattr(steps.HourRun, "run", watched_run)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: make(settings, s3, **SMALL).run(), range(2)))

    assert together == []
    states = {h.state for run in runs for h in run.hours}
    assert states <= {"compacted", "unchanged", "busy"}, runs
    make(settings, s3, **SMALL).run()  # what was busy for one run and left by the other
    assert_fully_compacted(s3, settings, expected)
