"""The ingest function's /metrics: in process through Flask's test client, then through gunicorn
with two workers (prometheus_client's multiprocess mode), a consumer stopped and resumed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import urllib3

from functions.ingest.app import create_app
from local import stack
from shared import metrics
from shared.settings import Settings
from tests.conftest import free_port, settings_env, stop_gunicorn, wait_until
from tests.metrics_samples import samples, value

BATCH = {"batch": [{"type": "track", "userId": "u", "event": "E"}] * 3}


# --- in process -------------------------------------------------------------------------------


def test_accepted_and_refused_events_are_counted_by_route_and_reason(settings, redis_client):
    opened = dataclasses.replace(settings, stream_max_len=3, metrics_public=True)
    client = create_app(opened).test_client()
    before = samples(client.get("/metrics").text)

    assert client.post("/batch", json=BATCH).status_code == 202
    assert client.post("/v1/batch", json=BATCH).status_code == 200
    assert client.post("/batch", data=b"{not json").status_code == 400
    assert client.post("/batch", json={"batch": [{"type": "track"}] * 2}).status_code == 400
    assert client.post("/batch", json=BATCH).status_code == 202
    assert client.post("/batch", json=BATCH).status_code == 503  # the stream holds 3 entries
    assert client.get("/nope").status_code == 404  # not an event request: not a refusal

    after = samples(client.get("/metrics").text)

    def gained(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert gained("event_ingest_events_accepted_total", route="/batch") == 6
    assert gained("event_ingest_events_accepted_total", route="/v1/batch") == 3
    assert gained("event_ingest_requests_refused_total", reason="invalid_request") == 2
    assert gained("event_ingest_events_refused_total", reason="invalid_request") == 2  # as read
    assert gained("event_ingest_requests_refused_total", reason="backlog_full") == 1
    assert gained("event_ingest_events_refused_total", reason="backlog_full") == 3
    assert gained("event_ingest_http_requests_total", route="/batch", status="202") == 2
    assert gained("event_ingest_http_requests_total", route="unmatched", status="404") == 1
    assert gained("event_ingest_http_request_duration_seconds_count", route="/batch") == 5
    assert gained("event_ingest_http_request_body_bytes_total", route="/batch") > 0
    # The stream's gauges, read from Redis at the scrape.
    assert value(after, "event_ingest_redis_up") == 1
    assert value(after, "event_ingest_stream_entries") == 3
    assert value(after, "event_ingest_stream_max_entries") == 3


def test_unauthorized_and_too_large_are_reasons_too(settings):
    keyed = dataclasses.replace(
        settings, write_keys=(("web", "k1"),), max_body_bytes=2000, metrics_public=True
    )
    client = create_app(keyed).test_client()
    before = samples(client.get("/metrics").text)
    assert client.post("/batch", json=BATCH, auth=("wrong", "")).status_code == 401
    big = {"batch": [{"type": "track", "userId": "u", "event": "E" * 3000}]}
    assert client.post("/batch", json=big, auth=("k1", "")).status_code == 413
    after = samples(client.get("/metrics").text)
    for reason in ("unauthorized", "too_large"):
        name = "event_ingest_requests_refused_total"
        assert value(after, name, reason=reason) - value(before, name, reason=reason) == 1


def test_a_metrics_token_is_required_as_a_bearer_token(settings):
    client = create_app(dataclasses.replace(settings, metrics_token="m-secret")).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", auth=("m-secret", "")).status_code == 401  # Basic: no
    answer = client.get("/metrics", headers={"Authorization": "Bearer m-secret"})
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain"
    assert "m-secret" not in answer.text


def test_metrics_can_be_turned_off(settings):
    client = create_app(dataclasses.replace(settings, metrics_enabled=False)).test_client()
    assert client.post("/batch", json=BATCH).status_code == 202
    assert client.get("/metrics").status_code == 404


def test_without_redis_the_counters_still_answer_and_redis_up_is_0(settings):
    gone = dataclasses.replace(
        settings,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        redis_timeout_s=0.2,
        metrics_public=True,
    )
    answer = create_app(gone).test_client().get("/metrics")
    assert answer.status_code == 200
    found = samples(answer.text)
    assert value(found, "event_ingest_redis_up") == 0
    assert not any(name == "event_ingest_stream_entries" for name, _ in found)
    assert any(name == "event_ingest_http_requests_total" for name, _ in found)


def test_on_lambda_each_invocation_prints_its_counts_as_emf(settings):
    client = create_app(settings).test_client()
    lines: list[str] = []
    emitter = metrics.EmfEmitter(lines.append, enabled=True)
    emitter.emit()  # what came before this invocation
    lines.clear()
    assert client.post("/batch", json=BATCH).status_code == 202
    emitter.emit()
    documents = [json.loads(line) for line in lines]
    accepted = [d for d in documents if "event_ingest_events_accepted_total" in d]
    assert len(accepted) == 1
    [document] = accepted
    assert document["event_ingest_events_accepted_total"] == 3
    assert document["route"] == "/batch"
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "EventIngest"
    assert directive["Dimensions"] == [["route"]]
    assert directive["Metrics"] == [{"Name": "event_ingest_events_accepted_total"}]
    lines.clear()
    emitter.emit()
    assert lines == []  # nothing new, nothing printed
    metrics.EmfEmitter(lines.append).emit()
    assert lines == []  # off Lambda (no AWS_LAMBDA_FUNCTION_NAME), Prometheus serves them


# --- through gunicorn, two workers ------------------------------------------------------------


METRICS_TOKEN = "scraper-token"


def scrape(url: str) -> dict:
    """On a connection of its own: a kept-alive one could be the killed worker's, or be closed
    by gunicorn's keep-alive timeout just as it is reused (a reset, seen on a loaded host)."""
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}", "Connection": "close"}
    answer = urllib3.PoolManager(retries=False).request("GET", f"{url}/metrics", headers=headers)
    assert answer.status == 200
    return samples(answer.data.decode())


def worker_pids(master: subprocess.Popen) -> list[int]:
    output = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master.pid)], capture_output=True)
    return [int(pid) for pid in output.stdout.split()]


@contextlib.contextmanager
def gunicorn_process(
    settings: Settings, metrics_dir: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    env = settings_env(
        settings,
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        METRICS_TOKEN=METRICS_TOKEN,
    )
    process = stack.start_gunicorn(env, f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(worker_pids(process)) == 2 and _answers(url), what="gunicorn")
        yield process, url
    finally:
        stop_gunicorn(process)


def _answers(url: str) -> bool:
    try:
        return urllib3.request("GET", f"{url}/livez", retries=False, timeout=1).status == 200
    except urllib3.exceptions.HTTPError:
        return False


def post_until_both_workers_counted(
    url: str, master: subprocess.Popen, metrics_dir: Path
) -> Counter[int]:
    """Rounds of 40 requests (one in ten malformed) on 8 threads, each on a new connection."""
    statuses: Counter[int] = Counter()
    http = urllib3.PoolManager(maxsize=8, retries=False)
    headers = {"Content-Type": "application/json", "Connection": "close"}

    def post(i: int) -> int:
        body = b"{broken" if i % 10 == 0 else json.dumps(BATCH).encode()
        return http.request("POST", f"{url}/batch", body=body, headers=headers).status

    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            statuses.update(pool.map(post, range(40)))
            writers = {p.stem.rpartition("_")[2] for p in metrics_dir.glob("counter_*.db")}
            if writers >= {str(pid) for pid in worker_pids(master)}:
                return statuses
    pytest.fail("800 requests on new connections all went to one gunicorn worker")


def event_counts(found: dict) -> tuple[float, float]:
    return (
        value(found, "event_ingest_events_accepted_total", route="/batch"),
        value(found, "event_ingest_requests_refused_total", reason="invalid_request"),
    )


def test_under_gunicorn_every_worker_counts_and_freshness_follows_the_consumer(
    settings: Settings, redis_client, moto_endpoint, http_s3, tmp_path: Path
):
    settings = dataclasses.replace(settings, s3_endpoint_url=moto_endpoint)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier server")
    env = settings_env(settings)
    runner = stack.start_runner(env, "--budget-s", "5")
    try:
        wait_until(lambda: redis_client.exists(settings.stream_key), what="the consumer group")
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 0
    with gunicorn_process(settings, metrics_dir) as (master, url):
        assert not (metrics_dir / "counter_999999.db").exists()  # each server starts at zero
        # Concurrent connections, closed after each request, until both workers have taken
        # some (which one accepts is the kernel's choice); every answer is counted once.
        statuses = post_until_both_workers_counted(url, master, metrics_dir)
        accepted, refused = statuses[202], statuses[400]
        assert set(statuses) == {202, 400} and refused == statuses.total() // 10
        first = scrape(url)
        # Whichever worker answers the scrape, the sums are every worker's.
        for _ in range(6):
            assert event_counts(scrape(url)) == (
                accepted * 3,
                refused,
            )

        # A worker that dies takes none of its counts with it.
        os.kill(worker_pids(master)[0], signal.SIGKILL)
        wait_until(lambda: len(worker_pids(master)) == 2, what="gunicorn to respawn a worker")
        wait_until(lambda: _answers(url), what="gunicorn to answer")
        assert event_counts(scrape(url)) == (accepted * 3, refused)

        # No consumer runs: the oldest unarchived entry gets older.
        fresh = value(first, "event_ingest_freshness_seconds", group="archiver")
        time.sleep(1.5)
        stale = scrape(url)
        assert value(stale, "event_ingest_freshness_seconds", group="archiver") >= fresh + 1
        assert value(stale, "event_ingest_backlog_entries", group="archiver") == accepted
        assert value(stale, "event_ingest_backlog_events", group="archiver") == accepted * 3

        # A consumer resumes and archives everything: the archive is fresh again.
        runner = stack.start_runner(env, "--budget-s", "5")
        try:

            def caught_up() -> bool:
                found = scrape(url)
                return value(found, "event_ingest_backlog_entries", group="archiver") == 0

            wait_until(caught_up, timeout_s=30, what="the consumer to catch up")
            final = scrape(url)
            assert value(final, "event_ingest_freshness_seconds", group="archiver") == 0
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=30)


@pytest.fixture(autouse=True)
def _no_multiprocess_env_leaks():
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ  # in-process tests use one registry
