"""The service's metrics: their names, the Prometheus exposition, and Lambda's EMF lines.

Names follow Prometheus's conventions: one prefix (`event_ingest_`), base units (seconds,
bytes), `_total` on counters. Labels stay bounded (route, status, reason, group): never a
consumer name, a key or anything a client chooses.

- Under gunicorn, every worker records into prometheus_client's multiprocess files
  (`PROMETHEUS_MULTIPROC_DIR`, which local/gunicorn.conf.py sets and empties at each start), so
  `/metrics` on any worker adds up all of them.
- The gauges operators alarm on (backlog, freshness, dead letters) are not recorded by anyone:
  `StreamCollector` reads them from Redis at scrape time (`shared.status`), so they are right
  even when every consumer is down. Compaction's (lag, failed hours, unreadable objects) come
  from the report its last run left in Redis: a scrape never reads the archive.
- On Lambda nothing scrapes: `EmfEmitter` prints the counters' increments of each invocation
  as CloudWatch Embedded Metric Format lines, with the same names.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.settings import Settings
from shared.status import (
    CompactionReport,
    StreamStatus,
    read_compaction_report,
    read_stream_status,
)
from shared.stream import REDIS_ERRORS, Client

PREFIX = "event_ingest_"
CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
EMF_NAMESPACE = "EventIngest"

# --- the ingest function ---------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    f"{PREFIX}http_requests_total", "HTTP requests answered.", ["route", "status"]
)
HTTP_DURATION = Histogram(
    f"{PREFIX}http_request_duration_seconds",
    "Time from a request's start to its answer, in the app.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BODY_BYTES = Counter(
    f"{PREFIX}http_request_body_bytes_total",
    "Bytes of event request bodies read, after decompression.",
    ["route"],
)
EVENTS_ACCEPTED = Counter(
    f"{PREFIX}events_accepted_total",
    "Events in requests answered 2xx: in the stream (suppressed ones and dropped bots are not).",
    ["route"],
)
REQUESTS_REFUSED = Counter(
    f"{PREFIX}requests_refused_total",
    "Event requests refused, by the answer's error code (invalid_request, unauthorized, "
    "too_large, rate_limited, backlog_full, unavailable, replication_timeout, ...).",
    ["reason"],
)
EVENTS_REFUSED = Counter(
    f"{PREFIX}events_refused_total",
    "Events in refused requests, where the body could be read.",
    ["reason"],
)
# Labels from configuration only: the source's name (`anonymous` without WRITE_KEYS, `unknown`
# when refused before the body holding its key was read) and which limit (`source`, `address`).
RATE_LIMITED_REQUESTS = Counter(
    f"{PREFIX}rate_limited_requests_total",
    "Event requests answered 429 rate_limited, by source and by the limit they were over.",
    ["source", "limit"],
)
RATE_LIMITED_EVENTS = Counter(
    f"{PREFIX}rate_limited_events_total",
    "Events in those requests, where the body was read (a request refused before its body "
    "counts none).",
    ["source", "limit"],
)
# Answered 2xx like any other (an SDK must neither retry nor log), but never stored.
EVENTS_SUPPRESSED = Counter(
    f"{PREFIX}events_suppressed_total",
    "Events answered 2xx but not stored: their userId or anonymousId is suppressed by a "
    "privacy regulation.",
    ["route"],
)
# DROP_BOTS: answered 2xx too (a crawler learns nothing), never stored.
BOT_EVENTS_DROPPED = Counter(
    f"{PREFIX}bot_events_dropped_total",
    "Events answered 2xx but not stored: flagged as bots (context.bot) while DROP_BOTS is on.",
    ["route"],
)

# TRACKING_PLAN (functions/ingest/tracking_plan.py). Labels are bounded: the source names of
# the write keys, the event names the plan lists (any other track event is `unplanned`, any
# other type its type), RudderStack's violation types.
PLAN_VIOLATIONS = Counter(
    f"{PREFIX}tracking_plan_violations_total",
    "Violations of the tracking plan found in events, by source, event and violation type "
    "(Unplanned-Event, Required-Missing, Datatype-Mismatch, Additional-Properties, "
    "Unknown-Violation); at most 5 an event.",
    ["source", "event", "type"],
)
# Blocked on Segment's paths: answered 2xx (its SDKs would drop or retry a 400), never stored.
EVENTS_BLOCKED = Counter(
    f"{PREFIX}events_blocked_total",
    "Events answered 2xx but not stored: the tracking plan blocks them.",
    ["route"],
)
EVENTS_QUARANTINED = Counter(
    f"{PREFIX}events_quarantined_total",
    "Events in the stream marked for the quarantine (stored under quarantine/, never with the "
    "other events): the tracking plan quarantines them.",
    ["route"],
)

# --- the consumer function -------------------------------------------------------------------

# Each is a field of the consumer's Summary, counted as it changes (ConsumerCounters).
CONSUMER_COUNTERS = {
    field: Counter(f"{PREFIX}consumer_{field}_total", help_text)
    for field, help_text in {
        "entries_read": "Stream entries read (one per ingest request), re-reads included.",
        "events_archived": "Events in objects stored and acknowledged.",
        "objects_written": "Objects stored in the archive, dead letters included.",
        "bytes_written": "Bytes of objects stored (compressed).",
        "entries_claimed": "Entries taken over from consumers that went away.",
        "entries_dead_lettered": "Entries set aside as dead letters.",
        "store_failures": "Failed attempts to store an object (each is retried).",
        "unflushed_entries": "Entries left pending because storage stayed down (flushes "
        "that gave up; the next invocation retries them).",
        "events_dropped_privacy": "Events not archived because a privacy regulation covers "
        "their subject (suppressed, or of a pending deletion), re-reads included.",
    }.items()
}
FLUSH_DURATION = Histogram(
    f"{PREFIX}consumer_flush_duration_seconds",
    "Time to store a flush's objects and acknowledge its entries, retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


class ConsumerCounters:
    """Adds to the counters what one invocation's Summary gained since the last `sync`: the
    drain loop tallies its Summary as it goes, and syncs after each flush and at the end."""

    def __init__(self, summary: object) -> None:
        self.summary = summary
        self.lock = threading.Lock()
        self.seen = dict.fromkeys(CONSUMER_COUNTERS, 0)

    def sync(self) -> None:
        with self.lock:  # the flusher thread and the loop both sync
            for field, counter in CONSUMER_COUNTERS.items():
                now = getattr(self.summary, field)
                if now > self.seen[field]:
                    counter.inc(now - self.seen[field])
                    self.seen[field] = now


# --- the compactor function ------------------------------------------------------------------

# Each is a field of a compaction Summary's `as_dict()`, added once per run (count_compaction).
COMPACTION_COUNTERS = {
    field: Counter(f"{PREFIX}compaction_{name}_total", help_text)
    for field, name, help_text in (
        ("hours_compacted", "hours_compacted", "Hours compacted (merged, inputs removed)."),
        ("hours_failed", "hours_failed", "Hours whose compaction failed (the next run retries)."),
        ("events_read", "events_read", "Events compaction read, copies included."),
        ("events_written", "events_written", "Events compaction stored, each once."),
        (
            "unreadable_objects",
            "objects_set_aside",
            "Objects compaction could not decode and set aside under _unreadable/.",
        ),
    )
}


def count_compaction(summary: object) -> None:
    """Add a compaction run's Summary to the counters."""
    totals = summary.as_dict()
    for field, counter in COMPACTION_COUNTERS.items():
        counter.inc(totals[field])


def compaction_gauges(report: CompactionReport) -> Iterator[Metric]:
    """A compaction report (shared.status) as gauges: what the last full run found, and since
    when. The compactor emits them itself through EMF; /metrics reads them from Redis."""
    yield _gauge(
        "compaction_lag_seconds",
        "Since the oldest closed hour not yet compacted closed (COMPACT_GRACE_S after it "
        "ended), as the last compaction run found it; 0 when every closed hour was compacted.",
        report.lag_s,
    )
    yield _gauge(
        "compaction_failed_hours",
        "Hours whose compaction failed in the last run (event-ingest status says why).",
        len(report.failed),
    )
    yield _gauge(
        "compaction_unreadable_objects",
        "Objects set aside as unreadable under _unreadable/, waiting for someone to look.",
        report.unreadable_objects,
    )
    yield _gauge(
        "compaction_report_age_seconds",
        "Since the last compaction run that reported finished.",
        report.age_s(),
    )


# --- the Prometheus exposition ---------------------------------------------------------------


def exposition(collector: StreamCollector | None = None) -> bytes:
    """Every process's counters (all gunicorn workers, living or not), then the stream's
    gauges read from Redis now."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        recorded = CollectorRegistry()
        multiprocess.MultiProcessCollector(recorded)
    else:
        recorded = prometheus_client.REGISTRY
    body = prometheus_client.generate_latest(recorded)
    if collector is not None:
        gauges = CollectorRegistry(auto_describe=False)
        gauges.register(collector)
        body += prometheus_client.generate_latest(gauges)
    return body


def mark_process_dead(pid: int) -> None:
    """For gunicorn's child_exit: a dead worker's counters keep counting, its gauges go."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        multiprocess.mark_process_dead(pid)


class StreamCollector:
    """The stream's state as gauges, read from Redis at each scrape. If Redis does not
    answer, `event_ingest_redis_up` is 0 and the other gauges are absent (not stale)."""

    def __init__(self, client: Callable[[], Client], settings: Settings) -> None:
        self.client, self.settings = client, settings  # `client()`: made at the first scrape

    def collect(self) -> Iterator[Metric]:
        try:
            status = read_stream_status(self.client(), self.settings)
            compaction = read_compaction_report(self.client(), self.settings.stream_key)
        except REDIS_ERRORS:
            yield _gauge("redis_up", "1 when Redis answered this scrape.", 0)
            return
        yield _gauge("redis_up", "1 when Redis answered this scrape.", 1)
        yield from stream_gauges(status)
        if compaction is not None:  # absent: no compaction run reported lately
            yield from compaction_gauges(compaction)


def stream_gauges(status: StreamStatus) -> Iterator[Metric]:
    yield _gauge(
        "stream_entries", "Entries in the stream (one per accepted request).", status.length
    )
    yield _gauge(
        "stream_max_entries",
        "STREAM_MAX_LEN: at this many entries ingest answers 503.",
        status.max_len,
    )
    yield _gauge(
        "stream_bytes",
        "Bytes of the entries in the stream (their fields' names and values), as admission "
        "counts them.",
        status.bytes,
    )
    yield _gauge(
        "stream_max_bytes",
        "STREAM_MAX_BYTES: at this many bytes of entries ingest answers 503.",
        status.max_bytes,
    )
    yield _gauge(
        "dead_letters", "Dead letters waiting in the dead-letter stream.", status.dead_letters
    )
    per_group: list[tuple[str, str, Callable]] = [
        (
            "backlog_entries",
            "Entries not yet acknowledged by the group.",
            lambda g: g.backlog_entries,
        ),
        (
            "backlog_events",
            "Events in those entries (estimated past a sample of the oldest).",
            lambda g: g.backlog_events,
        ),
        (
            "pending_entries",
            "Entries delivered to a consumer, not yet acknowledged.",
            lambda g: g.pending,
        ),
        (
            "freshness_seconds",
            "Age of the group's oldest entry not yet acknowledged (Redis's clock): how far "
            "behind the archive is.",
            lambda g: g.freshness_s,
        ),
        (
            "oldest_pending_seconds",
            "Age of the group's oldest entry held by a consumer.",
            lambda g: g.oldest_pending_s or 0.0,
        ),
        ("consumers", "Consumers the group knows.", lambda g: len(g.consumers)),
        (
            "consumer_pending_entries_max",
            "The most entries one consumer of the group holds.",
            lambda g: max((c.pending for c in g.consumers), default=0),
        ),
        (
            "group_idle_seconds",
            "Since any consumer of the group last read or claimed (+Inf with none).",
            lambda g: float("inf") if g.last_active_s is None else g.last_active_s,
        ),
    ]
    for name, help_text, value in per_group:
        family = GaugeMetricFamily(f"{PREFIX}{name}", help_text, labels=["group"])
        for group in status.groups:
            family.add_metric([group.name], value(group))
        yield family
    if status.shards:
        yield from _shard_gauges(status.shards)


def _shard_gauges(shards: tuple[StreamStatus, ...]) -> Iterator[Metric]:
    """A sharded stream's gauges above are totals; these say which shard holds what."""
    entries = GaugeMetricFamily(
        f"{PREFIX}shard_entries", "Entries in each shard's stream key.", labels=["shard"]
    )
    held = GaugeMetricFamily(
        f"{PREFIX}shard_bytes",
        "Bytes of the entries in each shard's stream key (each takes up to STREAM_MAX_BYTES).",
        labels=["shard"],
    )
    backlog = GaugeMetricFamily(
        f"{PREFIX}shard_backlog_entries",
        "Entries of each shard not yet acknowledged by the group.",
        labels=["group", "shard"],
    )
    freshness = GaugeMetricFamily(
        f"{PREFIX}shard_freshness_seconds",
        "Age of each shard's oldest entry not yet acknowledged by the group.",
        labels=["group", "shard"],
    )
    for shard in shards:
        entries.add_metric([shard.key], shard.length)
        held.add_metric([shard.key], shard.bytes)
        for group in shard.groups:
            backlog.add_metric([group.name, shard.key], group.backlog_entries)
            freshness.add_metric([group.name, shard.key], group.freshness_s)
    yield from (entries, held, backlog, freshness)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}{name}", help_text, value=value)


# --- Embedded Metric Format, for Lambda ------------------------------------------------------


class EmfEmitter:
    """Prints, at the end of each invocation, what each counter of this process gained since
    the last call, as CloudWatch EMF lines: CloudWatch turns them into metrics with the same
    names, one dimension per label; gauges given to `emit` go out as they are. Histograms
    are left to Lambda's and API Gateway's own duration metrics."""

    def __init__(self, write: Callable[[str], None] = print, enabled: bool | None = None) -> None:
        self.write = write
        # On Lambda only: the loop runner and gunicorn serve Prometheus instead.
        self.enabled = "AWS_LAMBDA_FUNCTION_NAME" in os.environ if enabled is None else enabled
        self.seen: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def emit(self, gauges: Iterator[Metric] | None = None) -> None:
        if not self.enabled:
            return
        timestamp = int(time.time() * 1000)
        for name, labels, value in [*self._increments(), *_gauge_samples(gauges or iter(()))]:
            document = {
                "_aws": {
                    "Timestamp": timestamp,
                    "CloudWatchMetrics": [
                        {
                            "Namespace": EMF_NAMESPACE,
                            "Dimensions": [sorted(labels)],
                            "Metrics": [{"Name": name}],
                        }
                    ],
                },
                name: value,
                **labels,
            }
            self.write(json.dumps(document, separators=(",", ":")))

    def _increments(self) -> Iterator[tuple[str, dict[str, str], float]]:
        for family in prometheus_client.REGISTRY.collect():
            if family.type != "counter" or not family.name.startswith(PREFIX):
                continue
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                increment = sample.value - self.seen.get(key, 0.0)
                self.seen[key] = sample.value
                if increment:
                    yield sample.name, dict(sample.labels), increment


def _gauge_samples(gauges: Iterator[Metric]) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in gauges:
        for sample in family.samples:
            if sample.value != float("inf"):  # CloudWatch takes finite numbers only
                yield sample.name, dict(sample.labels), sample.value
