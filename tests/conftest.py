"""Real parts for every test: a redis-server process, moto for S3, gunicorn for HTTP.

Tests share one redis-server per session (per process: `make test` runs them on several, with
pytest-xdist) but each gets its own stream key and bucket, so they never see each other's data
and never need a FLUSHALL. Every server gets a free port, every file a test's own directory.

Also here: the table of the fault-injection suite's figures, printed after the run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
import urllib3
from moto import mock_aws

from local import stack
from local.redis_server import RedisServer
from local.s3 import FAKE_CREDENTIALS, start_moto_server
from local.stack import free_port
from shared.settings import Settings

os.environ.update(FAKE_CREDENTIALS)

# For a server that replicas sync from: Redis 7 waits 5 s (repl-diskless-sync-delay) for more
# replicas to join before it streams its data, a wait that every test with a replica paid.
SYNC_REPLICAS_AT_ONCE = ("--repl-diskless-sync-delay", "0")
# The name of a test's user property holding one row of the fault-injection table
# (tests/faults/conftest.py `report`).
FAULT_FIGURES = "fault figures"


class FaultTable:
    """Prints the fault-injection suite's figures as a table after the run. The rows come from
    the tests' reports, not from the processes that ran them: pytest-xdist's controller, which
    prints the summary, runs no test and never loads tests/faults/conftest.py."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self.rows += [value for name, value in report.user_properties if name == FAULT_FIGURES]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.rows:
            from tests.faults.harness import write_table  # it imports this module

            write_table(terminalreporter, self.rows)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(FaultTable(), "fault-table")


# The files that take longest (a minute or more of one worker), run first: pytest-xdist hands
# out whole files in the order collected, and one of these handed out last is the suite's tail,
# one worker busy while the others are done. Measured with `--durations`; keep it to the few.
LONGEST_FIRST = (
    "tests/shared/test_compaction_kills.py",
    "tests/local/test_lambda_build.py",
    "tests/shared/archive/privacy/test_deletion_resume.py",
    "tests/shared/test_compaction_release.py",
    "tests/local/test_stack.py",
    "tests/shared/test_compaction.py",
    "tests/functions/consumer/test_drain.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


def wait_until(predicate, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = ""):
    """Poll until `predicate()` is truthy and return its value; fail the test on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what or predicate}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def replicated_redis(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica of it, for what depends on replication (WAIT)."""
    primary_dir = tmp_path_factory.mktemp("primary")
    primary = RedisServer(free_port(), primary_dir, *SYNC_REPLICAS_AT_ONCE).start()
    replica_args = ("--replicaof", "127.0.0.1", str(primary.port))
    replica = RedisServer(free_port(), tmp_path_factory.mktemp("replica"), *replica_args)
    try:
        replica.start().wait_replicating()
        wait_confirmed_by_replicas(primary, 1)
        yield primary, replica
    finally:
        replica.kill()
        primary.kill()


def wait_confirmed_by_replicas(primary: RedisServer, replicas: int) -> None:
    """Until a write on `primary` is confirmed by `replicas` replicas (WAIT), as the tests'
    writes must be: a replica says its link is up once it has loaded the primary's data, which
    may be a moment before the primary counts it as one to stream writes to."""
    client = redis.Redis.from_url(primary.url)

    def confirmed() -> bool:
        pipe = client.pipeline(transaction=False)  # one connection: WAIT counts its writes
        pipe.set("replication-check", 1).delete("replication-check").wait(replicas, 100)
        return pipe.execute()[-1] >= replicas

    wait_until(confirmed, timeout_s=10, what=f"{replicas} replicas to confirm a write")
    client.close()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def settings(redis_server: RedisServer) -> Settings:
    """Settings of an isolated pipeline: its own stream, group and bucket."""
    tag = uuid.uuid4().hex[:10]
    return Settings(
        redis_url=redis_server.url,
        stream_key=f"events-{tag}",
        consumer_group="archiver",
        s3_bucket=f"archive-{tag}",
        s3_prefix="events/",
        flush_max_events=1000,
        flush_max_bytes=1024 * 1024,
        flush_interval_s=0.5,
        claim_idle_ms=1000,
    )


# boto3's default session while moto's in-process mock runs, made once: moto sets none at each
# start, and every client of a new session reads botocore's models again (0.2 s of CPU, paid by
# hundreds of tests and the clients the code under test makes). The mock's state is still each
# test's own: moto resets it at each start, and restores the default session at each stop.
MOTO_SESSION = boto3.session.Session()


@pytest.fixture
def s3(settings: Settings) -> Iterator[Any]:
    """moto's in-process S3 with the settings' bucket created."""
    with mock_aws():
        boto3.DEFAULT_SESSION = MOTO_SESSION
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=settings.s3_bucket)
        yield client


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's real HTTP server, for tests whose processes reach S3 over HTTP."""
    server, endpoint = start_moto_server(free_port())
    yield endpoint
    server.stop()


@pytest.fixture
def http_s3(settings: Settings, moto_endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=settings.s3_bucket)
    return client


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment a process needs to run with `settings`."""
    env = {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "STREAM_KEY": settings.stream_key,
        "CONSUMER_GROUP": settings.consumer_group,
        "S3_BUCKET": settings.s3_bucket,
        "S3_PREFIX": settings.s3_prefix,
        "FLUSH_MAX_EVENTS": str(settings.flush_max_events),
        "FLUSH_MAX_BYTES": str(settings.flush_max_bytes),
        "FLUSH_INTERVAL_S": str(settings.flush_interval_s),
        "CLAIM_IDLE_MS": str(settings.claim_idle_ms),
        "ARCHIVE_FORMAT": settings.archive_format,
        "STREAM_SHARDS": str(settings.stream_shards),
        "REDIS_CLUSTER": str(settings.redis_cluster).lower(),
    }
    if settings.s3_endpoint_url:
        env["S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.write_keys:
        env["WRITE_KEYS"] = ",".join(f"{source}:{key}" for source, key in settings.write_keys)
    env.update(overrides)
    return env


@contextlib.contextmanager
def gunicorn_serving(settings: Settings, *, probe: bool = True, **overrides: str) -> Iterator[str]:
    """The ingest function served by gunicorn with the production config (and `overrides` of
    its environment); yields its URL once a worker answers. gunicorn listens before its workers
    have loaded the app, and a test timing an answer must not time their start (under load,
    seconds). `probe=False`: once it listens, without the request (GET /livez) that waits for
    a worker, for a test that asserts on every request gunicorn served."""
    port = free_port()
    env = settings_env(settings, **{"WEB_CONCURRENCY": "2", **overrides})
    process = stack.start_gunicorn(env, f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, "gunicorn exited at start"
        if not probe:
            return stack.listening(port, timeout_s=0.2)
        try:
            return urllib3.request("GET", f"{url}/livez", retries=False, timeout=2).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    wait_until(ready, timeout_s=30, what="gunicorn to serve")
    try:
        yield url
    finally:
        stop_gunicorn(process)


def stop_gunicorn(process: subprocess.Popen) -> None:
    """Stop a test's gunicorn at once, with its quick shutdown (SIGQUIT: the master stops its
    workers and reaps them). A graceful SIGTERM would wait for every keep-alive connection a
    client left open to idle out (GUNICORN_KEEPALIVE, 5 s); tests of the graceful stop send
    SIGTERM themselves."""
    if process.poll() is None:
        process.send_signal(signal.SIGQUIT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the workers go too
        process.wait()


@pytest.fixture
def gunicorn_url(settings: Settings) -> Iterator[str]:
    with gunicorn_serving(settings) as url:
        yield url


def archived_events(client: Any, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
    """Every event line of every object under `prefix`, parsed."""
    lines = []
    for key in archived_keys(client, bucket, prefix):
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        lines += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return lines


def archived_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def pending_count(client: redis.Redis, settings: Settings) -> int:
    """Entries delivered to the archiver group and not yet acknowledged (0 if no group yet)."""
    try:
        return client.xpending(settings.stream_key, settings.consumer_group)["pending"]
    except redis.ResponseError as exc:
        if "NOGROUP" in str(exc):
            return 0
        raise
