"""Replay against moto's in-process S3 (the archive of `tests.archives`, written by the real
writers) and a real redis-server."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from shared import codec
from shared.archive import ObjectStore, partitions, replay
from shared.archive.replay import Replayer
from shared.settings import Settings
from shared.stream import EventStream
from tests import archives

WHOLE = partitions.HourRange(None, None)
HOURS_14_15 = partitions.HourRange(
    partitions.parse_bound("2024-03-05T14"), partitions.parse_bound("2024-03-05T15", end=True)
)


@pytest.fixture(params=["ndjson", "parquet", "mixed"])
def archive(request, s3: Any, settings: Settings) -> str:
    archives.write_archive(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, request.param)
    return request.param


def replayer(s3: Any, redis_client, settings: Settings, into: str, max_len: int = 1000):
    producer = EventStream(redis_client, into, max_len)
    return Replayer(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix, producer, 24)


def replayed(redis_client, key: str) -> list[dict[str, Any]]:
    return [event for _, fields in redis_client.xrange(key) for event in codec.decode_entry(fields)]


@pytest.mark.usefixtures("archive")
def test_the_whole_archive_goes_onto_another_stream_each_event_once(s3, redis_client, settings):
    into = f"{settings.stream_key}-replayed"
    summary = replayer(s3, redis_client, settings, into).run(WHOLE)

    events = replayed(redis_client, into)
    ids = [event.get("messageId") for event in events]
    assert len(events) == summary.events_replayed == archives.EVENTS
    assert sorted(filter(None, ids)) == [f"m{i}" for i in range(1, 10)]
    assert ids.count(None) == 1  # archived without a messageId: replayed as it is
    assert summary.duplicates_dropped == archives.RAW_ROWS - archives.EVENTS
    by_id = {event.get("messageId"): event for event in events}
    for message_id, copy in archives.KEPT_COPY.items():
        assert by_id[message_id]["properties"]["copy"] == copy  # the earliest copy
    m3 = by_id["m3"]
    assert m3["receivedAt"] == "2024-03-05T13:07:00.000Z" and m3["channel"] == "server"
    assert (m3["event"], m3["userId"], m3["source"]) == ("Page Viewed", "u1", "web")
    assert all(replay.MARK in event for event in events)
    # In time order, and nothing left on the main stream.
    received = [event["receivedAt"] for event in events]
    assert received == sorted(received)
    assert redis_client.xlen(settings.stream_key) == 0


@pytest.mark.usefixtures("archive")
def test_a_range_replays_the_earliest_copy_it_holds(s3, redis_client, settings):
    into = f"{settings.stream_key}-replayed"
    replayer(s3, redis_client, settings, into).run(HOURS_14_15)
    events = replayed(redis_client, into)
    assert sum(archives.IN_RANGE_BY_EVENT.values()) == len(events) == 6
    m1 = next(e for e in events if e.get("messageId") == "m1")
    assert m1["properties"]["copy"] == 2  # its hour-13 copy is outside the range


@pytest.mark.usefixtures("archive")
def test_a_full_stream_pauses_the_replay_and_nothing_is_dropped(
    s3, redis_client, settings, monkeypatch
):
    monkeypatch.setattr(replay, "EVENTS_PER_ENTRY", 2)
    into = f"{settings.stream_key}-replayed"
    slow = replayer(s3, redis_client, settings, into, max_len=1)
    collected: list[dict[str, Any]] = []
    reasons: list[str] = []

    def consumer_catches_up(_seconds: float) -> None:
        for entry_id, fields in redis_client.xrange(into):
            collected.extend(codec.decode_entry(fields))
            redis_client.xdel(into, entry_id)

    slow.sleep = consumer_catches_up
    summary = slow.run(WHOLE, progress=lambda p: p.waiting_for and reasons.append(p.waiting_for))
    consumer_catches_up(0)
    assert summary.waits >= 4  # one entry fits at a time
    assert "has no consumer group: nobody consumes it" in reasons[0]
    assert len(collected) == archives.EVENTS
    assert len({e.get("messageId") for e in collected}) == archives.EVENTS  # None once


@pytest.mark.usefixtures("archive")
def test_a_stopped_replay_resumes_where_it_stopped(s3, redis_client, settings, monkeypatch):
    monkeypatch.setattr(replay, "EVENTS_PER_ENTRY", 2)
    into = f"{settings.stream_key}-replayed"

    def stop_after_three_entries(progress: replay.Progress) -> None:
        if progress.events_replayed >= 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replayer(s3, redis_client, settings, into).run(WHOLE, progress=stop_after_three_entries)
    assert len(replayed(redis_client, into)) == 6
    summary = replayer(s3, redis_client, settings, into).run(WHOLE)
    assert summary.resumed_after is not None and summary.events_replayed == 4
    events = replayed(redis_client, into)
    assert len(events) == archives.EVENTS  # the stop fell between entries: nothing twice
    # Finished: the place is forgotten, and the same command replays everything again.
    again = replayer(s3, redis_client, settings, into).run(WHOLE)
    assert again.resumed_after is None and again.events_replayed == archives.EVENTS


@pytest.mark.usefixtures("archive")
def test_restart_forgets_the_place(s3, redis_client, settings, monkeypatch):
    monkeypatch.setattr(replay, "EVENTS_PER_ENTRY", 2)
    into = f"{settings.stream_key}-replayed"
    with pytest.raises(KeyboardInterrupt):
        replayer(s3, redis_client, settings, into).run(
            WHOLE, progress=lambda p: (_ for _ in ()).throw(KeyboardInterrupt)
        )
    summary = replayer(s3, redis_client, settings, into).run(WHOLE, restart=True)
    assert summary.resumed_after is None and summary.events_replayed == archives.EVENTS


def test_settings_pick_the_main_stream_unless_told(settings):
    default = Replayer.from_settings(dataclasses.replace(settings, s3_endpoint_url=None))
    assert default.producer.key == settings.stream_key
    other = Replayer.from_settings(settings, into="warehouse-feed")
    assert other.producer.key == "warehouse-feed"


# --- two sources, one messageId ---------------------------------------------------------------


def write_shared_id(s3: Any, settings: Settings) -> None:
    """Hour 13: two sources' events with one messageId at one receivedAt, then another."""
    events = [
        archives.ev("m", "13:05", "Order Completed", "u1", source="web"),
        archives.ev("m", "13:05", "Order Completed", "u1", source="backend"),
        archives.ev("n", "13:06", "Page Viewed", "u1", source="web"),
    ]
    store = ObjectStore(s3, settings.s3_bucket)
    archives.write_ndjson(store, settings.s3_prefix, [(b"1-0", events)])


def sources_of(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["messageId"], event["source"]) for event in events]


def test_a_stop_between_two_sources_events_with_one_id_resumes_between_them(
    s3, redis_client, settings, monkeypatch
):
    write_shared_id(s3, settings)
    monkeypatch.setattr(replay, "EVENTS_PER_ENTRY", 1)
    into = f"{settings.stream_key}-replayed"

    def stop_after_one(progress: replay.Progress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replayer(s3, redis_client, settings, into).run(WHOLE, progress=stop_after_one)
    summary = replayer(s3, redis_client, settings, into).run(WHOLE)

    # Two events, not copies: both replayed, each once, in (receivedAt, messageId, source) order.
    assert summary.resumed_after == "2024-03-05T13" and summary.events_replayed == 2
    assert sources_of(replayed(redis_client, into)) == [
        ("m", "backend"),
        ("m", "web"),
        ("n", "web"),
    ]


def test_a_place_recorded_before_sources_counted_resumes_after_every_source(
    s3, redis_client, settings
):
    write_shared_id(s3, settings)
    into = f"{settings.stream_key}-replayed"
    resumed = replayer(s3, redis_client, settings, into)
    # What a version that kept one copy per messageId recorded after replaying m.
    old_place = {
        "hour": "2024-03-05T13",
        "received_at": "2024-03-05T13:05:00.000000+00:00",
        "message_id": "m",
    }
    redis_client.hset(resumed.place_key(WHOLE), mapping=old_place)

    summary = resumed.run(WHOLE)

    assert summary.resumed_after == "2024-03-05T13"
    assert sources_of(replayed(redis_client, into)) == [("n", "web")]


@pytest.mark.parametrize("fmt", ["ndjson", "parquet", "older parquet"])
def test_the_derived_columns_never_become_fields_of_replayed_events(
    s3, redis_client, settings, fmt
):
    """`country` ... `is_bot` are read from `context` (the source of truth), not part of the
    event: a replayed event is the archived one, whatever wrote it (the Parquet of the release
    before them derives them when read)."""
    originals = [
        archives.enriched(archives.ev("e1", "13:10", "Signed Up", "u1"), "France", "FR"),
        archives.enriched(archives.ev("e2", "13:11", "Page Viewed", "u2"), None, bot=True),
        archives.ev("e3", "13:12", "Page Viewed", "u3", context={"location": "Paris"}),
    ]
    store = ObjectStore(s3, settings.s3_bucket)
    entries = [(b"1709650000000-1", originals)]
    if fmt == "ndjson":
        archives.write_ndjson(store, settings.s3_prefix, entries)
    elif fmt == "parquet":
        archives.write_parquet(store, settings.s3_prefix, entries)
    else:
        with archives.release_before_derived_columns():
            archives.write_parquet(store, settings.s3_prefix, entries)
    into = f"{settings.stream_key}-replayed"

    replayer(s3, redis_client, settings, into).run(WHOLE)

    events = replayed(redis_client, into)
    assert [{k: v for k, v in e.items() if k != replay.MARK} for e in events] == originals
