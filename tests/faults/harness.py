"""The fault-injection harness: a whole pipeline of real processes, a client that keeps sending
batches through any fault, a trap inside the S3 endpoint, and the final accounting.

- `Pipeline`: its own redis-server (free port, its own AOF directory, so it can be SIGKILLed and
  restarted on the same file), its own moto server (so it can be stopped and started again),
  gunicorn serving the ingest function, and the loop runner driving the consumer function.
- `LoadClient`: threads posting batches of 10-20 events with client-set messageIds, retrying
  what got 503 or a connection error with the same messageIds, recording every messageId that
  got a 2xx.
- `StoreTrap`: runs an action (a SIGKILL) inside moto's PutObject, before or after the object
  is stored, to crash the consumer at an exact point of a flush.
- `settle` and `Outcome`: wait until the stream is drained, then count accepted, archived,
  lost and duplicated events.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import redis
import urllib3
from moto.s3.models import S3Backend
from moto.server import ThreadedMotoServer
from redis.cluster import ClusterNode

from local import stack
from local.redis_cluster import LocalCluster
from local.redis_server import RedisServer
from local.s3 import start_moto_server
from shared import shards as shards_module
from shared.settings import Settings
from shared.stream import dead_letter_key
from tests.conftest import archived_events, free_port, settings_env, stop_gunicorn, wait_until

BATCH_SIZES = (10, 20)
MAX_BATCH = BATCH_SIZES[1]
# Each runner invocation is short, so invocation boundaries happen during the faults too.
RUNNER_BUDGET_S = "10"


# --- the pipeline ---------------------------------------------------------------------------


@dataclass
class Pipeline:
    """Every process of one scenario; nothing is shared with other tests."""

    settings: Settings
    redis_server: RedisServer | LocalCluster
    moto: ThreadedMotoServer
    gunicorn: subprocess.Popen
    url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    runner: subprocess.Popen | None = None
    killed_runners: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        data_dir: Path,
        redis_server: RedisServer | LocalCluster | None = None,
        redis_url: str | None = None,
        shards: int = 1,
        **env: str,
    ) -> Pipeline:
        """Its own redis-server, unless given one, or a cluster (then reached at `redis_url`,
        if given: through a proxy, say); it is killed with the pipeline either way. `shards`:
        STREAM_SHARDS."""
        redis_server = redis_server or RedisServer(free_port(), data_dir / "redis").start()
        try:
            moto, endpoint = start_moto_server(free_port())
        except BaseException:
            redis_server.kill()
            raise
        try:
            return cls._start_ingest(redis_server, redis_url, moto, endpoint, shards, env)
        except BaseException:
            moto.stop()
            redis_server.kill()
            raise

    @classmethod
    def _start_ingest(
        cls,
        redis_server: RedisServer | LocalCluster,
        redis_url: str | None,
        moto: ThreadedMotoServer,
        endpoint: str,
        shards: int,
        env: dict,
    ) -> Pipeline:
        settings = Settings(
            redis_url=redis_url or redis_server.url,
            redis_cluster=isinstance(redis_server, LocalCluster),
            stream_key="events",
            stream_shards=shards,
            consumer_group="archiver",
            s3_bucket=f"faults-{uuid.uuid4().hex[:10]}",
            s3_prefix="events/",
            s3_endpoint_url=endpoint,
            flush_max_events=5000,
            flush_max_bytes=4 * 1024 * 1024,
            flush_interval_s=0.3,
            claim_idle_ms=2000,
        )
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=settings.s3_bucket)
        port = free_port()
        gunicorn_env = settings_env(settings, WEB_CONCURRENCY="2", **env)
        gunicorn = stack.start_gunicorn(gunicorn_env, f"127.0.0.1:{port}")
        pipeline = cls(settings, redis_server, moto, gunicorn, f"http://127.0.0.1:{port}", env)
        try:
            wait_until(pipeline._ingest_ready, timeout_s=30, interval_s=0.1, what="gunicorn")
        except BaseException:
            gunicorn.kill()
            gunicorn.wait()
            raise
        return pipeline

    def _ingest_ready(self) -> bool:
        assert self.gunicorn.poll() is None, "gunicorn exited at start"
        try:
            return urllib3.request("GET", f"{self.url}/healthz", timeout=1).status == 200
        except urllib3.exceptions.HTTPError:
            return False

    @property
    def env(self) -> dict[str, str]:
        return settings_env(self.settings, **self.extra_env)

    @property
    def redis(self) -> redis.Redis | redis.RedisCluster:
        if isinstance(self.redis_server, LocalCluster):  # any live node: one may be killed
            nodes = [
                ClusterNode("127.0.0.1", server.port)
                for server in self.redis_server.servers
                if server.running
            ]
            return redis.RedisCluster(startup_nodes=nodes, socket_timeout=5)
        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=5)

    def stream_keys(self, client: redis.Redis | redis.RedisCluster) -> list[str]:
        """Every key of the logical stream: STREAM_KEY, or its shards (shared/shards.py)."""
        return shards_module.keys_to_drain(
            client, self.settings.stream_key, self.settings.stream_shards
        )

    @property
    def s3(self) -> Any:
        return boto3.client("s3", endpoint_url=self.settings.s3_endpoint_url)

    # --- the consumer ---

    def start_runner(self) -> subprocess.Popen:
        assert self.runner is None or self.runner.poll() is not None
        self.runner = stack.start_runner(self.env, "--budget-s", RUNNER_BUDGET_S)
        return self.runner

    def kill_runner(self) -> int:
        """SIGKILL the runner; return how many events its consumer held unacknowledged."""
        assert self.runner is not None and self.runner.poll() is None, "the runner died early"
        self.runner.kill()
        return self.reap_killed_runner()

    def reap_killed_runner(self) -> int:
        runner = self.runner
        assert runner is not None
        assert runner.wait(timeout=10) == -signal.SIGKILL
        self.killed_runners.append(runner)
        self.runner = None
        return self.events_pending_on(runner.pid)

    def stop_runner(self) -> int:
        """SIGTERM: the runner flushes, acknowledges and exits; return its exit code."""
        runner, self.runner = self.runner, None
        assert runner is not None
        if runner.poll() is None:
            runner.terminate()
        return runner.wait(timeout=60)

    def events_pending_on(self, pid: int) -> int:
        """Events in the entries the consumer run by process `pid` left unacknowledged: what a
        crash of that consumer may duplicate at most."""
        client, group = self.redis, self.settings.consumer_group
        events = 0
        for key in self.stream_keys(client):
            try:
                consumers = client.xinfo_consumers(key, group)
            except redis.ResponseError:  # no group yet: the runner died before it made one
                continue
            names = [c["name"] for c in consumers if c["name"].decode().split("-")[-2] == str(pid)]
            for name in names:
                for pending in client.xpending_range(key, group, "-", "+", 100_000, name):
                    entry_id = pending["message_id"]
                    for _, fields in client.xrange(key, entry_id, entry_id):
                        events += int(fields.get(b"n", b"0"))
        return events

    def stop(self) -> None:
        """Tear everything down, whatever state the scenario left it in."""
        if self.runner is not None and self.runner.poll() is None:
            self.runner.kill()
            self.runner.wait(timeout=10)
        stop_gunicorn(self.gunicorn)
        self.moto.stop()
        self.redis_server.kill()

    # --- what the stream holds ---

    def pending(self) -> int:
        client, total = self.redis, 0
        for key in self.stream_keys(client):
            with contextlib.suppress(redis.ResponseError):  # no group yet
                total += client.xpending(key, self.settings.consumer_group)["pending"]
        return total

    def undelivered(self) -> int | None:
        """Entries no consumer has read yet (None: a key without the consumer group yet)."""
        client, total = self.redis, 0
        for key in self.stream_keys(client):
            groups = {g["name"].decode(): g for g in client.xinfo_groups(key)}
            group = groups.get(self.settings.consumer_group)
            if group is None:
                return None
            last = group["last-delivered-id"]
            total += len(client.xrange(key, f"({last.decode()}", "+"))
        return total

    def dead_letters(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        client = self.redis
        return [
            letter
            for key in self.stream_keys(client)
            for letter in client.xrange(dead_letter_key(key))
        ]


# --- the client -----------------------------------------------------------------------------


def make_batch(size: int) -> list[dict[str, Any]]:
    kinds = [
        {"type": "track", "event": "Order Completed", "properties": {"total": 9.99, "n": [1, 2]}},
        {"type": "identify", "traits": {"email": "a@example.com", "name": "Zoë"}},
        {"type": "page", "name": "Home", "properties": {"path": "/"}},
        {"type": "group", "groupId": "g1", "traits": {"plan": "pro"}},
    ]
    return [
        {**kinds[i % len(kinds)], "userId": f"user-{i}", "messageId": str(uuid.uuid4())}
        for i in range(size)
    ]


@dataclass
class Rejection:
    status: int
    headers: dict[str, str]
    body: bytes


class LoadClient:
    """Threads posting batches at a steady pace; a batch is retried with the same messageIds
    until it gets a 2xx (or the load stops). Anything else than 2xx, 503 or a connection error
    is recorded as unexpected."""

    def __init__(
        self,
        url: str,
        threads: int = 2,
        requests_per_s: float = 60,
        retry_wait_s: float = 0.1,
        seed: int = 0,
    ) -> None:
        self.url = f"{url}/batch"
        self.threads = threads
        self.interval_s = threads / requests_per_s
        self.retry_wait_s = retry_wait_s
        self.random = random.Random(seed)
        self.http = urllib3.PoolManager(
            maxsize=threads, retries=False, timeout=urllib3.Timeout(connect=2, read=15)
        )
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers: list[threading.Thread] = []
        self.sent: set[str] = set()  # every messageId ever posted
        self.accepted: set[str] = set()  # messageIds whose request got a 2xx
        self.accepted_requests = 0
        self.unavailable = 0  # 503 answers
        self.unavailable_by_error: Counter[str] = Counter()
        self.events_refused_by_error: Counter[str] = Counter()  # events in those answers
        self.connection_errors = 0
        self.retried_batches = 0
        self.unexpected: list[Rejection] = []
        self.last_unavailable: Rejection | None = None
        self.largest_body = 0

    def start(self) -> LoadClient:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            worker.start()
            self.workers.append(worker)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join(timeout=30)
            assert not worker.is_alive(), "a load thread hangs"

    def wait_for(self, predicate: Callable[[LoadClient], bool], timeout_s: float, what: str):
        return wait_until(lambda: predicate(self), timeout_s=timeout_s, what=what)

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                size = self.random.randint(*BATCH_SIZES)
            batch = make_batch(size)
            body = json.dumps({"batch": batch}).encode()
            ids = [event["messageId"] for event in batch]
            with self.lock:
                self.sent.update(ids)
                self.largest_body = max(self.largest_body, len(body))
            self._deliver(body, ids)
            self.stopping.wait(self.interval_s)

    def _deliver(self, body: bytes, ids: list[str]) -> None:
        attempts = 0
        while not self.stopping.is_set():
            attempts += 1
            wait_s = self.retry_wait_s
            try:
                response = self.http.request(
                    "POST", self.url, body=body, headers={"Content-Type": "application/json"}
                )
            except urllib3.exceptions.HTTPError:
                with self.lock:
                    self.connection_errors += 1
            else:
                answer = Rejection(response.status, dict(response.headers), response.data)
                with self.lock:
                    if 200 <= response.status < 300:
                        self.accepted.update(ids)
                        self.accepted_requests += 1
                        self.retried_batches += attempts > 1
                        return
                    if response.status != 503:
                        self.unexpected.append(answer)
                        return
                    self.unavailable += 1
                    self.unavailable_by_error[_error_code(response.data)] += 1
                    self.events_refused_by_error[_error_code(response.data)] += len(ids)
                    self.last_unavailable = answer
                retry_after = float(response.headers.get("Retry-After") or wait_s)
                wait_s = min(retry_after, wait_s)  # honoured, but capped to keep tests short
            self.stopping.wait(wait_s)


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return "?"


# --- a trap inside the S3 endpoint ----------------------------------------------------------


class StoreTrap:
    """Runs an action inside moto's PutObject for archive objects, once per arming.

    `before`: the action runs and the object is not stored (the request fails).
    `after`: the object is stored, then the action runs before the answer goes back: for a
    consumer killed there, the flush is stored but not acknowledged.
    """

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.lock = threading.Lock()
        self.armed: tuple[str, Callable[[], None], threading.Event] | None = None
        self.original = S3Backend.put_object

    def install(self, monkeypatch: Any) -> StoreTrap:
        trap = self

        def put_object(backend: Any, bucket_name: str, key_name: str, *args: Any, **kw: Any):
            armed = trap._take(bucket_name, key_name)
            if armed and armed[0] == "before":
                armed[1]()
                armed[2].set()
                raise ConnectionAbortedError("fault injected before storing")
            stored = trap.original(backend, bucket_name, key_name, *args, **kw)
            if armed:
                armed[1]()
                armed[2].set()
            return stored

        monkeypatch.setattr(S3Backend, "put_object", put_object)
        return self

    def arm(self, when: str, action: Callable[[], None]) -> threading.Event:
        assert when in ("before", "after")
        fired = threading.Event()
        with self.lock:
            self.armed = (when, action, fired)
        return fired

    def disarm(self) -> None:
        with self.lock:
            self.armed = None

    def _take(self, bucket: str, key: str):
        with self.lock:
            if bucket != self.bucket or not key.startswith(self.prefix) or self.armed is None:
                return None
            armed, self.armed = self.armed, None
            return armed


def sigkill(pid: int) -> Callable[[], None]:
    return lambda: os.kill(pid, signal.SIGKILL)


# --- the accounting -------------------------------------------------------------------------


@dataclass
class Figures:
    """One row of the suite's table."""

    scenario: str
    accepted: int
    archived: int
    lost: int
    duplicates: int
    unavailable: int
    dead_letters: int
    seconds: float
    notes: str = ""


# The table's columns: heading, Figures field, cell format.
COLUMNS = (
    ("scenario", "scenario", "{:<25}"),
    ("accepted", "accepted", "{:>8}"),
    ("archived", "archived", "{:>8}"),
    ("lost", "lost", "{:>4}"),
    ("duplicates", "duplicates", "{:>10}"),
    ("503s", "unavailable", "{:>5}"),
    ("dead letters", "dead_letters", "{:>12}"),
    ("seconds", "seconds", "{:>7.1f}"),
    ("notes", "notes", "{}"),
)


def write_table(terminalreporter: Any, rows: list[dict[str, Any]]) -> None:
    """The rows (`Figures` as dicts) as the table the suite prints after the run."""
    terminalreporter.write_sep("=", "fault injection: events accepted vs archived")
    header = [fmt.replace(".1f", "").format(heading) for heading, _, fmt in COLUMNS]
    terminalreporter.write_line("  ".join(header).rstrip())
    for row in rows:
        cells = [fmt.format(row[name]) for _, name, fmt in COLUMNS]
        terminalreporter.write_line("  ".join(cells).rstrip())


@dataclass
class Outcome:
    figures: Figures
    lost: set[str]
    phantoms: set[str]  # archived messageIds the client never sent
    pending: int
    undelivered: int | None
    unexpected: list[Rejection]


def settle(
    pipeline: Pipeline, load: LoadClient, scenario: str, started: float, notes: str = ""
) -> Outcome:
    """After the load stopped: wait until the consumer has read and acknowledged everything,
    then compare what the client was told was accepted with what the archive holds."""

    def drained() -> bool:
        return pipeline.undelivered() == 0 and pipeline.pending() == 0

    wait_until(drained, timeout_s=60, interval_s=0.2, what="the stream to be drained")
    events = archived_events(pipeline.s3, pipeline.settings.s3_bucket, pipeline.settings.s3_prefix)
    counts = Counter(event["messageId"] for event in events)
    lost = load.accepted - counts.keys()
    figures = Figures(
        scenario=scenario,
        accepted=len(load.accepted),
        archived=len(events),
        lost=len(lost),
        duplicates=sum(n - 1 for n in counts.values()),
        unavailable=load.unavailable,
        dead_letters=len(pipeline.dead_letters()),
        seconds=time.monotonic() - started,
        notes=notes,
    )
    return Outcome(
        figures=figures,
        lost=lost,
        phantoms=counts.keys() - load.sent,
        pending=pipeline.pending(),
        undelivered=pipeline.undelivered(),
        unexpected=list(load.unexpected),
    )


def assert_nothing_lost(outcome: Outcome, max_duplicates: int) -> None:
    """What every scenario promises, whatever the fault was."""
    figures = outcome.figures
    assert outcome.unexpected == [], f"answers other than 2xx or 503: {outcome.unexpected[:3]}"
    assert figures.accepted > 0, "the load got nothing accepted: the scenario proved nothing"
    assert not outcome.lost, (
        f"{figures.lost} acknowledged events not archived, e.g. {sorted(outcome.lost)[:3]}"
    )
    assert not outcome.phantoms, f"archived events nobody sent: {sorted(outcome.phantoms)[:3]}"
    assert (outcome.pending, outcome.undelivered) == (0, 0)
    assert figures.duplicates <= max_duplicates, (
        f"{figures.duplicates} duplicates, more than the {max_duplicates} events in flight"
    )
