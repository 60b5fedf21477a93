"""The compactor: which closed hours need compacting, and each one's run under its lock and
the time budget; one `Compactor` serves every invocation of the function and the CLI."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis

from shared import status, stream
from shared.archive import reading
from shared.archive.compaction import locks
from shared.archive.compaction.locks import HourLocks
from shared.archive.compaction.plan import OBJECT_BYTES, STEP_BYTES, HourState, needs_work
from shared.archive.compaction.reports import HourResult, Progress, Summary, one_line
from shared.archive.compaction.steps import HourRun
from shared.archive.naming import REASON_SUFFIX, UNREADABLE_ROOT, compacted_part
from shared.archive.partitions import HOUR, HourRange, hour_in, hour_label
from shared.archive.reading import ArchivedObject
from shared.archive.storage import ObjectStore
from shared.settings import Settings

log = logging.getLogger(__name__)

# No step starts with less than this left of the budget (or a quarter of it, when smaller).
STOP_MARGIN_MS = 60_000
# The scheduled function looks back this far for hours to compact (late objects included).
LOOKBACK_H = 7 * 24
# Where a run keeps its plans, spills and markers, under S3_PREFIX, outside every root.
STAGING = "_compaction/"

RemainingMs = Callable[[], int]


class OutOfTime(Exception):
    """The budget left is below the stop margin: no further step starts."""


def count_unreadable(store: ObjectStore, prefix: str) -> int:
    """The objects set aside under `<prefix>_unreadable/` (their reasons not counted)."""
    keys = store.keys_under(f"{prefix}{UNREADABLE_ROOT}")
    return sum(1 for key in keys if not key.endswith(REASON_SUFFIX))


# --- the compactor --------------------------------------------------------------------------


class Budget:
    def __init__(self, remaining_ms: RemainingMs | None) -> None:
        self.remaining_ms = remaining_ms
        self.margin_ms = min(STOP_MARGIN_MS, remaining_ms() // 4) if remaining_ms else 0

    def exhausted(self) -> bool:
        return self.remaining_ms is not None and self.remaining_ms() < self.margin_ms

    def check(self) -> None:
        if self.exhausted():
            raise OutOfTime()


class Compactor:
    """Compacts closed hours of the archive. Reused across invocations of the function."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        redis_client: redis.Redis,
        *,
        object_bytes: int = OBJECT_BYTES,
        step_bytes: int = STEP_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.prefix = settings.s3_prefix
        self.staging = f"{settings.s3_prefix}{STAGING}"
        self.redis = redis_client
        self.locks = HourLocks(
            redis_client,
            locks.namespace(settings.stream_key, store.bucket, settings.s3_prefix),
            settings.compact_lease_s,
        )
        self.object_bytes = object_bytes
        self.step_bytes = step_bytes
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> Compactor:
        # Unlike the consumer's, retried: a failed step costs a rerun of the step.
        store = ObjectStore.from_settings(settings, attempts=4, read_timeout_s=60)
        return cls(settings, store, stream.connect(settings))

    # --- which hours ----------------------------------------------------------------------

    def closes_at(self, hour: datetime) -> datetime:
        return hour + HOUR + timedelta(seconds=self.settings.compact_grace_s)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def survey(self, hours: HourRange | None = None) -> list[HourState]:
        """The closed hours in `hours` (default: all) that need compacting, oldest first."""
        now = self.now()
        last_closed = (now - timedelta(seconds=self.settings.compact_grace_s) - HOUR).replace(
            minute=0, second=0, microsecond=0
        )
        hours = hours or HourRange()
        if hours.end is None or hours.end > last_closed:  # open hours are not even listed
            hours = HourRange(hours.start, last_closed)
        listed: dict[datetime, list[ArchivedObject]] = {}
        for item in reading.list_objects(self.store, self.prefix, hours):
            listed.setdefault(item.hour_start, []).append(item)
        in_progress = {hour_in(key) for key in self.store.keys_under(f"{self.staging}work/")}
        rechecks: dict[datetime, int] = {}
        for key in self.store.keys_under(f"{self.staging}recheck/"):
            rechecks[hour_in(key)] = rechecks.get(hour_in(key), 0) + 1
        states = []
        for hour in sorted((set(listed) | in_progress | set(rechecks)) - {None}):
            if not hours.holds_hour(hour.date(), hour.hour) or self.closes_at(hour) > now:
                continue
            objects = listed.get(hour, [])
            if not needs_work(objects, rechecks.get(hour, 0), hour in in_progress):
                continue
            compacted = sum(1 for item in objects if compacted_part(item.key))
            states.append(
                HourState(
                    hour=hour,
                    raw_objects=len(objects) - compacted,
                    compacted_objects=compacted,
                    bytes=sum(item.size for item in objects),
                    in_progress=hour in in_progress,
                    rechecks=rechecks.get(hour, 0),
                )
            )
        return states

    # --- doing it -------------------------------------------------------------------------

    def run(
        self,
        hours: HourRange | None = None,
        remaining_ms: RemainingMs | None = None,
        progress: Callable[[Progress], None] | None = None,
        *,
        report: bool = False,
    ) -> Summary:
        """Compact every closed hour in `hours` (default: all) that needs it, oldest first;
        then, while time is left, the hours that this asked to check again. The hours that
        still need it after that give the lag. With `report` (a run over every hour its
        caller looks after), the lag, failed hours and unreadable objects go to Redis."""
        budget = Budget(remaining_ms)
        summary = Summary()
        tried: set[datetime] = set()
        while True:
            # Surveyed after the last batch too (the lag), out of time or not.
            left = [s.hour for s in self.survey(hours)]
            pending = [hour for hour in left if hour not in tried]
            if not pending or summary.out_of_time:
                break
            self._compact(pending, budget, progress, summary)
            tried.update(pending)
        if left:
            summary.oldest_hour = hour_label(left[0])
        summary.lag_s = (self.now() - self.closes_at(left[0])).total_seconds() if left else 0.0
        if report:
            self.write_report(summary, hours or HourRange())
        return summary

    def run_scheduled(self, remaining_ms: RemainingMs) -> Summary:
        """What the scheduled function does: the closed hours of the last LOOKBACK_H hours."""
        start = self.now().replace(minute=0, second=0, microsecond=0) - LOOKBACK_H * HOUR
        return self.run(HourRange(start=start), remaining_ms, report=True)

    def write_report(self, summary: Summary, hours: HourRange) -> None:
        """The run's report (`summary.report`), for `event-ingest status` and /metrics, which
        read only Redis. Failing to leave it fails nothing: the last one stays until it
        expires, and the warning is logged."""
        try:
            summary.report = status.CompactionReport(
                finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
                scope=_scope(hours),
                lag_s=summary.lag_s or 0.0,
                oldest_hour=summary.oldest_hour,
                hours_compacted=summary.count("compacted"),
                failed=tuple(
                    status.FailedHour(r.hour, r.error) for r in summary.hours if r.state == "failed"
                ),
                unreadable_objects=count_unreadable(self.store, self.prefix),
            )
            status.write_compaction_report(self.redis, self.settings.stream_key, summary.report)
        except Exception:  # the run's own outcome stands; this is its echo
            log.warning("could not leave the compaction report in Redis", exc_info=True)

    def compact(
        self,
        hours: list[datetime],
        remaining_ms: RemainingMs | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> Summary:
        """Compact each of `hours` (closed, or refused), oldest first, while the budget lasts.
        A failure fails its hour only; the next run resumes it."""
        now = self.now()
        for hour in hours:
            if self.closes_at(hour) > now:
                raise ValueError(
                    f"{hour_label(hour)} is not closed yet: it closes at "
                    f"{self.closes_at(hour):%Y-%m-%dT%H:%M:%SZ} (COMPACT_GRACE_S after it ends)"
                )
        summary = Summary()
        self._compact(hours, Budget(remaining_ms), progress, summary)
        return summary

    def _compact(
        self,
        hours: list[datetime],
        budget: Budget,
        progress: Callable[[Progress], None] | None,
        summary: Summary,
    ) -> None:
        hours = sorted(set(hours))
        for done, hour in enumerate(hours):
            if budget.exhausted():
                summary.hours_left = len(hours) - done
                summary.out_of_time = True
                break

            def report(step: str, hour: datetime = hour, done: int = done) -> None:
                if progress:
                    progress(Progress(hour_label(hour), step, done, len(hours)))

            result = HourResult(hour_label(hour), "compacted")
            summary.hours.append(result)
            lock = self.locks.acquire(hour)
            if lock is None:
                result.state = "busy"
                until = self.locks.held_until(hour)
                result.busy_until = until and until.isoformat(timespec="seconds")
                report("busy", done=done + 1)
                continue
            try:
                HourRun(self, hour, lock, budget, summary, result, report).run()
            except OutOfTime:
                result.state = "partial"
                summary.hours_left = len(hours) - done - 1
                summary.out_of_time = True
                break
            except Exception as exc:  # whatever it is, it fails this hour only
                log.warning("compacting %s failed: %s", result.hour, exc, exc_info=True)
                result.state, result.error = "failed", one_line(exc)
            finally:
                lock.release()
            report(result.state, done=done + 1)


def _scope(hours: HourRange) -> str:
    """The hours a run looked after, in words."""
    if hours.start is None and hours.end is None:
        return "every closed hour"
    first = hour_label(hours.start) if hours.start else "the first"
    return f"closed hours from {first} to {hour_label(hours.end) if hours.end else 'now'}"
