"""What a stream holds right now, read from Redis: its entries and their bytes against the
bounds, for each consumer group its backlog, pending entries, data freshness and consumers, and
the dead letters waiting.

One read (`read_status`) serves `event-ingest status` and the gauges of the ingest function's
`/metrics`, so the two never disagree. It only reads, and its cost to Redis is fixed whatever
the backlog and whatever the entries' sizes: a handful of commands per key and per group that
return counters and IDs (XLEN, XINFO GROUPS and CONSUMERS, XPENDING's summary, the size hash),
and entry IDs and event counts read from the key's ledger (shards.ledger_key: one small record
per entry), at most EVENT_SAMPLE records. Never an entry itself: with entries of megabytes,
reading them (even inside Redis, in Lua) blocked Redis for seconds per scrape.

Exact: the stream's entries and bytes (the size hash), every group's pending entries; with one
group, its backlog's events (the stream holds exactly its backlog: acknowledging deletes).
Estimated, and said so: with several groups, a group's backlog events past EVENT_SAMPLE
entries (the sample's mean times its entries), and on Redis 6.2 its undelivered entries.

Entries written before the ledger existed (a release without it, or during a rolling deploy)
have no record and are not in the size hash: their bytes are not counted until they drain.
While the ledger does not account for every entry, the status reads that key as before the
ledger: IDs and event counts from the entries themselves, which costs Redis in proportion to
their sizes, until those entries drain.

Compaction reads the archive, which status and /metrics never do: each full compaction run
leaves a report in Redis instead (`CompactionReport`, under shards.compaction_report_key), which
they read with one GET.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import redis

from shared import shards
from shared.settings import Settings
from shared.stream import accounting_keys, dead_letter_key

# Entries whose event counts are read; a longer backlog's event count is estimated from them.
EVENT_SAMPLE = 500

# The event counts (field `n`) of up to ARGV[2] records from ARGV[1] on: of the ledger, whose
# records are small; inside Redis, and without the ledger, from the entries themselves.
_EVENT_COUNTS = """
local counts = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', ARGV[2])) do
  local n = 0
  for i = 1, #entry[2], 2 do
    if entry[2][i] == 'n' then n = tonumber(entry[2][i + 1]) or 0 end
  end
  counts[#counts + 1] = n
end
return counts
"""


@dataclass(frozen=True)
class ConsumerStatus:
    name: str
    pending: int
    idle_s: float  # since it last read or claimed (by Redis's clock)


@dataclass(frozen=True)
class GroupStatus:
    name: str
    last_delivered_id: str
    pending: int  # delivered to a consumer, not yet acknowledged
    undelivered: int  # not yet delivered to any consumer of the group (its lag)
    undelivered_exact: bool  # False: an upper bound (Redis 6.2 with several groups)
    backlog_events: int  # events in pending and undelivered entries
    backlog_events_exact: bool  # False: estimated from the oldest EVENT_SAMPLE entries
    freshness_s: float  # age of the oldest entry not yet acknowledged; 0 when there is none
    oldest_pending_s: float | None  # age of the oldest pending entry
    consumers: tuple[ConsumerStatus, ...]

    @property
    def backlog_entries(self) -> int:
        return self.pending + self.undelivered

    @property
    def last_active_s(self) -> float | None:
        """Since any consumer of the group last read or claimed; None with no consumer."""
        return min((c.idle_s for c in self.consumers), default=None)


@dataclass(frozen=True)
class StreamStatus:
    key: str
    length: int
    max_len: int
    last_generated_id: str | None
    groups: tuple[GroupStatus, ...]
    dead_letters: int
    redis_version: str
    bytes: int = 0  # of the entries' fields, as admission counts them (see module docstring)
    max_bytes: int = 0
    # For a sharded stream (STREAM_SHARDS): each key's own status; the fields above are totals.
    shards: tuple[StreamStatus, ...] = ()

    @property
    def freshness_s(self) -> float:
        """The stalest group's freshness: how far behind the archive is."""
        return max((group.freshness_s for group in self.groups), default=0.0)


def read_stream_status(client: redis.Redis, settings: Settings) -> StreamStatus:
    """The logical stream's status: STREAM_KEY's own, or the totals over every key of a
    sharded stream (shared/shards.py), each key's status kept in `shards`."""
    keys = shards.keys_to_drain(client, settings.stream_key, settings.stream_shards)
    statuses = [
        read_status(client, key, settings.stream_max_len, settings.stream_max_bytes) for key in keys
    ]
    if keys == [settings.stream_key]:
        return statuses[0]
    return combined(settings.stream_key, statuses)


def combined(key: str, statuses: list[StreamStatus]) -> StreamStatus:
    """Totals over shards: lengths, bounds, backlogs and dead letters add up; a group's
    freshness is its stalest shard's; a consumer's pending entries add up over the shards, and
    its idle time is the shortest."""
    groups: dict[str, list[GroupStatus]] = {}
    for status in statuses:
        for group in status.groups:
            groups.setdefault(group.name, []).append(group)
    return StreamStatus(
        key=key,
        length=sum(s.length for s in statuses),
        max_len=sum(s.max_len for s in statuses),
        bytes=sum(s.bytes for s in statuses),
        max_bytes=sum(s.max_bytes for s in statuses),
        last_generated_id=max(
            (s.last_generated_id for s in statuses if s.last_generated_id), key=_ms, default=None
        ),
        groups=tuple(_combined_group(name, parts) for name, parts in groups.items()),
        dead_letters=sum(s.dead_letters for s in statuses),
        redis_version=min(s.redis_version for s in statuses),
        shards=tuple(statuses),
    )


def _combined_group(name: str, parts: list[GroupStatus]) -> GroupStatus:
    consumers: dict[str, list[ConsumerStatus]] = {}
    for part in parts:
        for consumer in part.consumers:
            consumers.setdefault(consumer.name, []).append(consumer)
    oldest_pending = [p.oldest_pending_s for p in parts if p.oldest_pending_s is not None]
    return GroupStatus(
        name=name,
        last_delivered_id=max((p.last_delivered_id for p in parts), key=_ms),
        pending=sum(p.pending for p in parts),
        undelivered=sum(p.undelivered for p in parts),
        undelivered_exact=all(p.undelivered_exact for p in parts),
        backlog_events=sum(p.backlog_events for p in parts),
        backlog_events_exact=all(p.backlog_events_exact for p in parts),
        freshness_s=max(p.freshness_s for p in parts),
        oldest_pending_s=max(oldest_pending, default=None),
        consumers=tuple(
            ConsumerStatus(consumer, sum(c.pending for c in same), min(c.idle_s for c in same))
            for consumer, same in consumers.items()
        ),
    )


def read_status(client: redis.Redis, key: str, max_len: int, max_bytes: int) -> StreamStatus:
    """The stream's status now. A stream that does not exist yet is empty, with no groups."""
    seconds, micros = client.time()
    now_ms = seconds * 1000 + micros // 1000
    held = _read_held(client, key)
    groups_info = client.xinfo_groups(key) if held.length or client.exists(key) else []
    groups = tuple(
        _group_status(client, held, info, len(groups_info), now_ms) for info in groups_info
    )
    return StreamStatus(
        key=key,
        length=held.length,
        max_len=max_len,
        last_generated_id=_last_generated_id(client, held) if groups_info or held.length else None,
        groups=groups,
        dead_letters=client.xlen(dead_letter_key(key)),
        redis_version=str(client.info("server")["redis_version"]),
        bytes=held.bytes,
        max_bytes=max_bytes,
    )


@dataclass(frozen=True)
class _Held:
    """What one stream key holds, read at one instant."""

    key: str
    length: int
    bytes: int
    events: int
    # Where entry IDs and event counts are read: the key's ledger when it has a record of
    # every entry (its records are small), else the stream itself.
    index: str

    @property
    def recorded(self) -> bool:
        return self.index != self.key


# The stream's length, its ledger's, and its size hash, read together (a script is atomic):
# whether the ledger has a record of every entry is known only from lengths read at once.
_HELD = """
return {
  redis.call('XLEN', KEYS[1]),
  redis.call('XLEN', KEYS[3]),
  tonumber(redis.call('HGET', KEYS[2], 'bytes')) or 0,
  tonumber(redis.call('HGET', KEYS[2], 'events')) or 0,
}
"""


def _read_held(client: redis.Redis, key: str) -> _Held:
    keys = accounting_keys(key)
    length, recorded, held_bytes, events = client.register_script(_HELD)(keys=keys)
    return _Held(key, length, held_bytes, events, index=keys[2] if recorded == length else key)


def _last_generated_id(client: redis.Redis, held: _Held) -> str | None:
    """XINFO STREAM answers with the first and last entries whole: asked of the ledger, whose
    records carry the same IDs, or of the stream when it is empty."""
    source = held.index if held.length else held.key
    return _text(client.xinfo_stream(source)["last-generated-id"])


def _group_status(
    client: redis.Redis, held: _Held, info: dict, group_count: int, now_ms: int
) -> GroupStatus:
    name = _text(info["name"])
    last_delivered = _text(info["last-delivered-id"])
    pending = int(info["pending"])
    undelivered, exact = _undelivered(client, held, info, last_delivered, pending, group_count)
    summary = client.xpending(held.key, name) if pending else None
    oldest_pending = _text(summary["min"]) if summary else None
    first_undelivered = _first_id_after(client, held.index, last_delivered) if undelivered else None
    oldest = min(filter(None, (oldest_pending, first_undelivered)), key=_ms, default=None)
    backlog = pending + undelivered
    events, events_exact = _backlog_events(client, held, oldest, backlog, group_count)
    consumers = tuple(
        ConsumerStatus(_text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
        for c in client.xinfo_consumers(held.key, name)
    )
    return GroupStatus(
        name=name,
        last_delivered_id=last_delivered,
        pending=pending,
        undelivered=undelivered,
        undelivered_exact=exact,
        backlog_events=events,
        backlog_events_exact=events_exact and exact,
        freshness_s=_age_s(oldest, now_ms) if oldest else 0.0,
        oldest_pending_s=_age_s(oldest_pending, now_ms) if oldest_pending else None,
        consumers=consumers,
    )


def _undelivered(
    client: redis.Redis,
    held: _Held,
    info: dict,
    last_delivered: str,
    pending: int,
    group_count: int,
) -> tuple[int, bool]:
    """Entries after the group's last delivered one: Redis 7's `lag` when it knows it; with
    one group, the length less what is pending (acknowledging deletes, so nothing else
    stays); else the length is an upper bound."""
    lag = info.get("lag")
    if lag is not None:
        return int(lag), True
    if group_count == 1:
        return max(0, held.length - pending), True
    if not _first_id_after(client, held.index, last_delivered):
        return 0, True
    return held.length, False


def _first_id_after(client: redis.Redis, index: str, entry_id: str) -> str | None:
    """The ID of the first entry after `entry_id`, from `index` (the ledger, or the stream),
    without moving the record over the network."""
    first = client.register_script(_ID_AFTER)(keys=[index], args=[f"({entry_id}"])
    return _text(first) if first else None


_ID_AFTER = """
local first = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', 1)[1]
return first and first[1] or false
"""


def _backlog_events(
    client: redis.Redis, held: _Held, oldest: str | None, backlog: int, group_count: int
) -> tuple[int, bool]:
    """Events in the group's backlog: the size hash's count when the group is the stream's
    only one and the stream holds exactly its backlog; else summed from the oldest entry on
    when the whole backlog is in the sample and the group is the only one (so every entry from
    the oldest on is in its backlog); else the sample's mean times the backlog's entries."""
    if oldest is None or not backlog:
        return 0, True
    if held.recorded and group_count == 1 and backlog == held.length:
        return held.events, True
    script = client.register_script(_EVENT_COUNTS)  # EVALSHA: the body is sent once per Redis
    counts = [int(n) for n in script(keys=[held.index], args=[oldest, EVENT_SAMPLE])]
    if not counts:
        return 0, True
    if group_count == 1 and len(counts) < EVENT_SAMPLE:
        return sum(counts), True
    return round(sum(counts) / len(counts) * backlog), False


def _age_s(entry_id: str, now_ms: int) -> float:
    return max(0.0, (now_ms - _ms(entry_id)) / 1000)


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# --- compaction -------------------------------------------------------------------------------

# How long a compaction report outlives the run that wrote it. The scheduled compactor writes
# one every 5 minutes; one this old describes no current run (the lag it gives has grown since),
# so it goes, and its absence says that no run reported lately. The key of a stream nobody
# compacts any more goes too.
COMPACTION_REPORT_TTL_S = 6 * 3600


@dataclass(frozen=True)
class FailedHour:
    hour: str  # YYYY-MM-DDTHH
    error: str  # one line: the exception's type and message


@dataclass(frozen=True)
class CompactionReport:
    """What a full compaction run (over every closed hour it looks after) found at its end."""

    finished_at: str  # ISO 8601, UTC
    scope: str  # the hours it looked after, in words
    lag_s: float  # since the oldest closed hour not yet compacted closed; 0 when none is left
    oldest_hour: str | None  # that hour
    hours_compacted: int
    failed: tuple[FailedHour, ...]  # hours whose compaction failed in that run, and why
    unreadable_objects: int  # objects set aside as unreadable, waiting under `_unreadable/`

    def age_s(self, now: datetime | None = None) -> float:
        """Since the run finished (by this machine's clock)."""
        finished = datetime.fromisoformat(self.finished_at)
        return max(0.0, ((now or datetime.now(UTC)) - finished).total_seconds())

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CompactionReport:
        document = json.loads(text)
        document["failed"] = tuple(FailedHour(**f) for f in document["failed"])
        return cls(**document)


def write_compaction_report(client: redis.Redis, stream_key: str, report: CompactionReport) -> None:
    """One key, replaced whole by each run: the last run's view is the current one."""
    key = shards.compaction_report_key(stream_key)
    client.set(key, report.to_json(), ex=COMPACTION_REPORT_TTL_S)


def read_compaction_report(client: redis.Redis, stream_key: str) -> CompactionReport | None:
    """The last report, or None when no full run reported in COMPACTION_REPORT_TTL_S."""
    text = client.get(shards.compaction_report_key(stream_key))
    return None if text is None else CompactionReport.from_json(text)
