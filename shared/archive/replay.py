"""Replay: the archived events of a time range back onto a stream, each once, resumable.

For re-processing downstream: a new consumer group, a warehouse loader reading another
stream key. Events are read hour by hour, each hour's copies of an event (the same `source` and
`messageId`: `columns.DEDUP_KEY`) reduced to the earliest (`received_at`, then key order),
and copies already seen in the DEDUP_WINDOW hours before dropped, as compaction does. They keep
their `messageId` and `receivedAt` and gain `replayedAt` (when they were replayed), so that a
reader tells them from new events; back on the main stream they are archived into their
original hours again, where compaction and queries keep one copy.

Within an hour events go in (`receivedAt`, `messageId`, `source`) order, which no rewrite of
the archive (compaction) changes, so the place reached, kept in Redis beside the target stream
after each entry, means the same after a restart: a stopped replay resumes there and repeats at
most the entry in flight. Entries go through admission control: at STREAM_MAX_LEN the replay
waits.

An object that cannot be decoded stops the replay before its hour (`reading.Unreadable`,
naming it); `event-ingest compact` sets such objects aside, keeping what decodes, after which
the replay resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any

import pyarrow as pa
import redis
from tenacity import RetryCallState, RetryError

from shared import codec, events, retrying
from shared.archive import columns, reading
from shared.archive.columns import DEDUP_KEY
from shared.archive.partitions import HourRange, hour_label, parse_hour
from shared.archive.storage import ObjectGone, ObjectStore
from shared.settings import Settings
from shared.stream import BacklogFull, EventStream, ReplicationShortfall, ShardedStream, producer

MARK = "replayedAt"
EVENTS_PER_ENTRY = 500
WAIT_S = 1.0
PLACE_TTL_S = 7 * 24 * 3600
# Where a place recorded without its event's source stands among the sources of its
# (receivedAt, messageId): after all of them, as versions that kept one copy per messageId
# recorded it.
AFTER_EVERY_SOURCE = (2, "")

EventKey = tuple[str | None, ...]  # a row's DEDUP_KEY values
Place = tuple[tuple[bool, str], str, tuple[int, str]]  # (receivedAt, messageId, source)


@dataclass
class Progress:
    hour: str
    events_replayed: int
    waiting_for: str | None = None  # why it waits, while it waits


@dataclass
class Summary:
    into: str
    hours: int = 0
    events_replayed: int = 0
    entries_added: int = 0
    duplicates_dropped: int = 0
    resumed_after: str | None = None
    waits: int = 0
    hours_done: list[str] = field(default_factory=list)


class ArchiveChanging(Exception):
    """An hour's objects kept being replaced (by compactions) while they were read."""


class Replayer:
    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        producer: EventStream | ShardedStream,
        dedup_window_h: int,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store, self.prefix, self.producer = store, prefix, producer
        self.window = timedelta(hours=dedup_window_h)  # DEDUP_WINDOW
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings, into: str | None = None) -> Replayer:
        target = dataclasses.replace(settings, stream_key=into or settings.stream_key)
        store = ObjectStore.from_settings(settings, attempts=4)
        return cls(store, settings.s3_prefix, producer(target), settings.dedup_window_h)

    def place_key(self, hours: HourRange) -> str:
        scope = f"{hours.start}|{hours.end}|{self.prefix}"
        return f"{self.producer.key}:replay:{hashlib.sha1(scope.encode()).hexdigest()[:16]}"

    def run(
        self,
        hours: HourRange,
        progress: Callable[[Progress], None] | None = None,
        restart: bool = False,
    ) -> Summary:
        place_key = self.place_key(hours)
        client = self.producer.client
        if restart:
            client.delete(place_key)
        place = _decode_place(client.hgetall(place_key))
        summary = Summary(into=self.producer.key, resumed_after=place and place[0])
        recent: deque[tuple[datetime, set[EventKey]]] = deque()
        resume = parse_hour(place[0]) if place else None
        for hour, items in self._hours(hours):
            label = hour_label(hour)
            done = resume is not None and hour < resume
            if done and hour + self.window < resume:
                continue  # replayed before, and too early to hold copies of what is left
            rows, dropped = self._once(self._read_hour(hour, items), hour, recent)
            if done:
                continue  # replayed before: read only for the events it holds
            summary.hours += 1
            summary.duplicates_dropped += dropped
            after = place[1] if place and label == place[0] else None
            self._replay_hour(label, rows, after, place_key, summary, progress)
            summary.hours_done.append(label)
        client.delete(place_key)  # finished: a later run with the same range starts over
        return summary

    # --- reading ----------------------------------------------------------------------------

    def _hours(self, hours: HourRange) -> Iterator[tuple[datetime, list[reading.ArchivedObject]]]:
        objects = reading.list_objects(self.store, self.prefix, hours)
        for (day, hour), items in groupby(
            sorted(objects, key=_hour_then_key), key=lambda o: (o.dt, o.hour)
        ):
            yield datetime(day.year, day.month, day.day, hour, tzinfo=UTC), list(items)

    def _read_hour(self, start: datetime, items: list[reading.ArchivedObject]) -> pa.Table:
        """The hour's rows; listed again if compaction replaced its objects meanwhile.
        reading.Unreadable when one of them cannot be decoded."""
        day, hour = start.date(), start.hour
        try:
            for attempt in retrying.relisting(ObjectGone, attempts=3):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        items = reading.list_partition(self.store, self.prefix, day, hour)
                    tables = [reading.read_object(self.store, o) for o in items]
        except RetryError:
            raise ArchiveChanging(
                f"the objects of {day} hour {hour} keep changing; try again"
            ) from None
        return pa.concat_tables(tables) if tables else columns.SCHEMA.empty_table()

    def _once(
        self, table: pa.Table, hour: datetime, recent: deque[tuple[datetime, set[EventKey]]]
    ) -> tuple[list[dict[str, Any]], int]:
        """The hour's rows, each event (DEDUP_KEY) once, the earliest copy, without those seen
        in the window before, in the order `_order` gives."""
        while recent and hour - recent[0][0] > self.window:
            recent.popleft()
        earlier = set().union(*(keys for _, keys in recent)) if recent else set()
        rows, seen = [], set()
        for row in sorted(table.to_pylist(), key=_order):  # stable: ties stay in key order
            if row["message_id"] is not None:  # an event archived without one cannot be matched
                key = tuple(row[name] for name in DEDUP_KEY)
                if key in seen or key in earlier:
                    continue
                seen.add(key)
            rows.append(row)
        recent.append((hour, seen))
        return rows, table.num_rows - len(rows)

    # --- writing ----------------------------------------------------------------------------

    def _replay_hour(
        self,
        label: str,
        rows: list[dict[str, Any]],
        after: Place | None,
        place_key: str,
        summary: Summary,
        progress: Callable[[Progress], None] | None,
    ) -> None:
        if after is not None:
            rows = [r for r in rows if _order(r) > after]
        replayed_at = events.received_at_now()
        for start in range(0, len(rows), EVENTS_PER_ENTRY):
            batch = rows[start : start + EVENTS_PER_ENTRY]
            entry = codec.encode_entry([columns.to_event(r) | {MARK: replayed_at} for r in batch])
            self._add(entry, label, summary, progress)
            last = batch[-1]
            place = {
                "hour": label,
                "received_at": _time_key(last),
                "message_id": last["message_id"] or "",
                "source": json.dumps(last["source"]),  # null apart from every name
            }
            pipe = self.producer.client.pipeline(transaction=False)  # one round trip
            pipe.hset(place_key, mapping=place).expire(place_key, PLACE_TTL_S).execute()
            summary.entries_added += 1
            summary.events_replayed += len(batch)
            if progress:
                progress(Progress(label, summary.events_replayed))

    def _add(self, entry: dict[bytes, bytes], label: str, summary: Summary, progress) -> None:
        """Append, waiting while the stream is full or its replicas lag; never drop."""

        def waiting(state: RetryCallState) -> None:
            summary.waits += 1
            if progress:
                why = self._why(state.outcome.exception())
                progress(Progress(label, summary.events_replayed, why))

        policy = retrying.while_full(
            (BacklogFull, ReplicationShortfall),
            wait_s=WAIT_S,
            before_sleep=waiting,
            sleep=self.sleep,
        )
        policy(self.producer.add, entry)

    def _why(self, exc: Exception) -> str:
        key = self.producer.key
        if isinstance(exc, ReplicationShortfall):
            return "no replica confirmed the last entry"
        shard = self.producer.shards[0] if isinstance(self.producer, ShardedStream) else None
        try:
            consumed = bool(self.producer.client.xinfo_groups(shard.key if shard else key))
        except redis.ResponseError:
            consumed = False
        full = f"{key} is at STREAM_MAX_LEN or STREAM_MAX_BYTES"
        if consumed:
            return f"{full}; waiting for its consumers"
        return f"{full} and has no consumer group: nobody consumes it"


def _hour_then_key(item: reading.ArchivedObject) -> tuple:
    # Not by key alone: the roots (NDJSON, Parquet, compacted) each hold every hour.
    return item.dt, item.hour, item.key


def _time_key(row: dict[str, Any]) -> str:
    moment = row["received_at"]
    return "" if moment is None else moment.isoformat(timespec="microseconds")


def _order(row: dict[str, Any]) -> Place:
    """A row's place in its hour: the order events are replayed in, and compared with the
    place a stopped replay reached. The source comes last, so that two sources' events with one
    messageId and receivedAt have an order too."""
    return _time_order(_time_key(row)), row["message_id"] or "", _source_order(row["source"])


def _time_order(stamp: str) -> tuple[bool, str]:
    return stamp == "", stamp  # without a receivedAt: last, as compaction sorts it


def _source_order(source: str | None) -> tuple[int, str]:
    return (0, "") if source is None else (1, source)  # NULL (anonymous) first


def _decode_place(raw: dict[bytes, bytes]) -> tuple[str, Place] | None:
    """The hour and the place in it a stopped replay reached; None if it has not started."""
    if not raw:
        return None
    source = raw.get(b"source")
    where = AFTER_EVERY_SOURCE if source is None else _source_order(json.loads(source))
    stamp = _time_order(raw[b"received_at"].decode())
    return raw[b"hour"].decode(), (stamp, raw[b"message_id"].decode(), where)
