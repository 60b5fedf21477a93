"""The consumer's counters: in process, and served by the loop runner on METRICS_PORT."""

from __future__ import annotations

import dataclasses
import signal

import prometheus_client
import urllib3

from local import stack
from shared.settings import Settings
from tests.conftest import archived_events, free_port, settings_env, wait_until
from tests.functions.consumer.drains import Budget, break_storage, make_drainer, post
from tests.metrics_samples import samples, value

COUNTED = ("events_archived", "entries_read", "objects_written", "bytes_written", "store_failures")


def counters() -> dict[str, float]:
    registry = prometheus_client.REGISTRY
    return {
        field: registry.get_sample_value(f"event_ingest_consumer_{field}_total") or 0.0
        for field in (*COUNTED, "unflushed_entries")
    }


def test_the_counters_gain_what_the_summaries_say(settings: Settings, s3, redis_client) -> None:
    post(settings, redis_client, 6)
    drainer = make_drainer(settings, s3)
    restore = break_storage(drainer)
    before = counters()
    failed = drainer.drain(Budget(0.6))
    restore()
    flushes_before = prometheus_client.REGISTRY.get_sample_value(
        "event_ingest_consumer_flush_duration_seconds_count"
    )
    stored = drainer.drain(Budget(1.5))
    after = counters()
    for field in COUNTED:
        assert after[field] - before[field] == getattr(failed, field) + getattr(stored, field)
    assert after["unflushed_entries"] - before["unflushed_entries"] == failed.unflushed_entries > 0
    assert stored.events_archived == 18 and stored.bytes_written > 0
    assert failed.store_failures > 0
    flushes = prometheus_client.REGISTRY.get_sample_value(
        "event_ingest_consumer_flush_duration_seconds_count"
    )
    assert flushes > flushes_before


def test_the_loop_runner_serves_them_on_metrics_port(
    settings: Settings, redis_client, moto_endpoint, http_s3
) -> None:
    settings = dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)
    post(settings, redis_client, 5)
    port = free_port()
    env = settings_env(settings, METRICS_PORT=str(port), METRICS_TOKEN="scraper-token")
    runner = stack.start_runner(env, "--budget-s", "3")
    url = f"http://127.0.0.1:{port}/metrics"
    bearer = {"Authorization": "Bearer scraper-token"}
    try:

        def archived_all() -> dict | None:
            try:
                answer = urllib3.request("GET", url, headers=bearer, retries=False)
            except urllib3.exceptions.HTTPError:
                return None
            assert answer.status == 200, answer.data
            found = samples(answer.data.decode())
            return found if value(found, "event_ingest_consumer_events_archived_total") else None

        found = wait_until(archived_all, timeout_s=20, what="the runner's metrics")
        assert value(found, "event_ingest_consumer_events_archived_total") == 15
        assert len(archived_events(http_s3, settings.s3_bucket)) == 15
        assert value(found, "event_ingest_consumer_entries_read_total") == 5
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 0
