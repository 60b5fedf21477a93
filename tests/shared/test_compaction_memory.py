"""Compaction's memory does not grow with what the DEDUP_WINDOW holds.

Each compaction runs in a process of its own (`local.bench.compaction_memory`, which `make
bench` runs too), against moto's HTTP server in this process, so that its peaks are its own:
an hour of 20,000 events compacted after no compacted hours, then the same hour after 24
compacted hours of 200,000 events each (4.8 million keys to check it against).
"""

from __future__ import annotations

from typing import Any

from local.bench import archive_reading, compaction_memory, report
from shared.archive import ObjectStore
from shared.settings import Settings
from tests.conftest import settings_env

# How much more the second compaction may take, at its peak, than the first.
MEMORY_RATIO = 1.2


def test_a_day_of_busy_hours_before_costs_no_more_memory_than_none(
    settings: Settings, http_s3: Any, moto_endpoint: str
) -> None:
    env = settings_env(settings, S3_ENDPOINT_URL=moto_endpoint)

    measured = compaction_memory.compare(ObjectStore(http_s3, settings.s3_bucket), env)

    alone, after = measured["alone"], measured["after_window"]
    events = compaction_memory.HOUR_EVENTS
    repeated = int(events * compaction_memory.REPEATED_SHARE)
    assert (alone["events_read"], alone["events_written"]) == (events, events)
    # The window was checked: the hour's events stored in it before are dropped.
    assert (after["events_read"], after["events_written"]) == (events, events - repeated)
    assert alone["errors"] == after["errors"] == []
    assert after["arrow_peak_bytes"] <= MEMORY_RATIO * alone["arrow_peak_bytes"], measured
    assert after["peak_rss_bytes"] <= MEMORY_RATIO * alone["peak_rss_bytes"], measured
    # What `make bench` shows of it.
    line = report.compaction_memory_line(archive_reading.memory_row(measured))
    assert f"peak RSS {round(alone['peak_rss_bytes'] / 2**20):,} MB" in line
    assert f"{measured['rss_ratio']:.2f}x RSS, {measured['arrow_ratio']:.2f}x Arrow" in line
