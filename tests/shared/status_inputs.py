"""What the status tests read: stream entries aged by their IDs, and a compaction report with
a failed hour. Writes to the real redis-server it is given; nothing else."""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from shared.status import CompactionReport, FailedHour


def add_aged(client: redis.Redis, key: str, count: int, age_s: float, events: int = 3) -> list:
    """Entries whose IDs say they were added `age_s` ago (IDs are Redis's clock at XADD)."""
    seconds, micros = client.time()
    start_ms = seconds * 1000 + micros // 1000 - int(age_s * 1000)
    return [
        client.xadd(
            key, {b"v": b"1", b"n": str(events).encode(), b"d": b"x" * 100}, id=f"{start_ms}-{i}"
        )
        for i in range(count)
    ]


# A run that left hour 13 failed and one object set aside.
A_COMPACTION_REPORT = CompactionReport(
    finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    scope="every closed hour",
    lag_s=5400.0,
    oldest_hour="2024-03-05T13",
    hours_compacted=4,
    failed=(FailedHour("2024-03-05T13", "JSONDecodeError: Expecting value"),),
    unreadable_objects=1,
)
