"""`make bench` reports compaction's peak memory: the compaction runs in a process of its own
(`local.bench.compaction_memory`), whose peaks are its own."""

from __future__ import annotations

from typing import Any

import pytest

from local.bench import archive_reading, query_memory, report
from shared.archive import ObjectStore
from shared.settings import Settings
from tests.conftest import settings_env

PREFIX = "bench/archive-ndjson/"


@pytest.fixture
def stored(settings: Settings, http_s3: Any) -> int:
    """The benchmark's NDJSON archive of 2,000 events (and 1% stored twice): rows stored."""
    store = ObjectStore(http_s3, settings.s3_bucket)
    return archive_reading.write_archive(store, PREFIX, 2_000, "ndjson")


def test_the_compaction_line_says_its_peak_rss(
    settings: Settings, moto_endpoint: str, stored: int
) -> None:
    row = archive_reading.compact(settings_env(settings, S3_ENDPOINT_URL=moto_endpoint), PREFIX)

    assert (row["hours"], row["events_read"], row["errors"]) == (archive_reading.HOURS, stored, [])
    assert row["events_written"] == 2_000  # the 1% stored twice are dropped
    # A Python process with pyarrow and boto3 loaded holds more than 50 MB; Arrow's peak is at
    # least the rows of one hour decoded (500 events, some hundred bytes each).
    assert 50 <= row["peak_rss_mb"] < 2_000
    assert 0 < row["arrow_peak_bytes"] < row["peak_rss_bytes"]
    line = report.compaction_line(row)
    assert f"peak RSS {row['peak_rss_mb']:,} MB (Arrow {row['arrow_peak_mb']:,} MB)" in line


def test_the_query_memory_line_says_the_query_processes_own_peaks(
    settings: Settings, http_s3: Any, moto_endpoint: str
) -> None:
    store = ObjectStore(http_s3, settings.s3_bucket)
    env = settings_env(settings, S3_ENDPOINT_URL=moto_endpoint)

    row = query_memory.compare(store, env, "bench/query-memory/", sizes=(500, 1_500))

    names = query_memory.EVENT_NAMES
    for measured in (row["small"], row["large"]):
        share = measured["events"] // len(names)
        assert measured["answer"] == [[name, str(share)] for name in sorted(names)]
        assert 50 * 2**20 <= measured["peak_rss_bytes"] < 2_000 * 2**20
    assert row["rss_ratio"] == round(
        row["large"]["peak_rss_bytes"] / row["small"]["peak_rss_bytes"], 3
    )
    line = report.query_memory_line(row)
    assert f"over 500, {round(row['large']['peak_rss_bytes'] / 2**20):,} MB" in line
    assert line.endswith(": met)")


def test_the_query_process_line_says_its_rate_against_the_target(
    settings: Settings, moto_endpoint: str, stored: int
) -> None:
    env = settings_env(settings, S3_ENDPOINT_URL=moto_endpoint)

    row = query_memory.process_row(env, PREFIX, stored)

    assert sum(int(n) for _, n in row["answer"]) == 2_000  # the 1% stored twice counted once
    assert 0 < row["seconds"] < row["process_s"]
    assert row["events_per_s"] == round(stored / row["process_s"])
    line = report.query_process_line("ndjson", row)
    assert f": {row['events_per_s']:,} rows/s (target >= 150,000: " in line
