"""A backlog of the largest entries ingest admits must not wedge the consumer.

XREADGROUP counts entries, not bytes: 200 entries of 8 MiB (what an amplified 1 MiB request
becomes) are 1.6 GB in one read, in a 1 GB function. A consumer that dies on a read dies again
on the retry, which reads the same pending entries. Reads are bounded by READ_MAX_BYTES, and an
entry still pending after MAX_DELIVERIES is dead-lettered without being read if it is larger
than READ_MAX_BYTES.

Real parts: the loop runner (local/runner.py, the drain code Lambda runs) as a subprocess with
an address-space limit (RLIMIT_AS) of its own measured baseline plus MEMORY_MARGIN, a
redis-server, moto's S3 server. Sizes are scaled down (MAX_BODY_BYTES 256 KiB, so entries of
about 1-2 MiB) to keep the test fast: a 200-entry read takes the whole ~100 MiB backlog at
once, beyond the margin, and a bounded read (four entries) plus the buffers fit within it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import resource
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import redis

from local.redis_server import RedisServer
from local.stack import ROOT
from shared import codec, events, stream
from shared.settings import Settings
from shared.shards import dead_letter_key
from tests.conftest import archived_events, archived_keys, free_port, settings_env, wait_until

MAX_BODY_BYTES = 256 * 1024
LARGEST = codec.max_entry_bytes(MAX_BODY_BYTES)
READ_MAX_BYTES = 4 * LARGEST  # four entries per read
FLUSH_MAX_BYTES = 2 * LARGEST
# What the runner may add to its baseline address space: a bounded read, the buffer and a
# flush in flight need about 20 MiB; reading the whole backlog at once, several times more.
MEMORY_MARGIN = 40 * 1024 * 1024
BACKLOG = -(-64 * 1024 * 1024 // LARGEST)  # entries of LARGEST: 64 MiB, fewer than 200
EVENTS_PER_ENTRY = 32
# An entry larger than the consumer can hold, as a misconfigured ingest might write.
POISON_BYTES = 64 * 1024 * 1024
# Invocations short, retries after a failed one quick: the runner's own intervals.
RUNNER_ARGS = ("--budget-s", "5", "--retry-s", "0.1")


@dataclass
class Backlog:
    settings: Settings
    client: redis.Redis
    s3: object
    env: dict[str, str]
    log_dir: Path

    def add(self, fields: dict[bytes, bytes]) -> bytes:
        return stream.producer(self.settings, self.client).add(fields)

    def drained(self) -> bool:
        """Everything read and acknowledged (with one group, acknowledged entries are gone)."""
        key = self.settings.stream_key
        if not self.client.exists(key) or not self.client.xinfo_groups(key):
            return False  # no consumer has started yet
        pending = self.client.xpending(key, self.settings.consumer_group)["pending"]
        return self.client.xlen(key) == 0 and pending == 0

    def start_runner(self, address_space: int | None, name: str) -> subprocess.Popen:
        """The loop runner, its address space limited to `address_space` bytes (None: not)."""

        def limit() -> None:
            if address_space is not None:
                resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

        with (self.log_dir / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "local.runner", *RUNNER_ARGS],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limit,
            )

    def log_of(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def open_backlog(directory: Path, moto_endpoint: str) -> Iterator[Backlog]:
    """A stream of its own (in a redis-server of its own), a bucket, the runner's settings."""
    server = RedisServer(free_port(), directory / "redis", "--appendonly", "no").start()
    try:
        settings = Settings(
            redis_url=server.url,
            stream_key="events",
            consumer_group="archiver",
            s3_bucket=f"memory-{uuid.uuid4().hex[:10]}",
            s3_prefix="events/",
            s3_endpoint_url=moto_endpoint,
            flush_max_bytes=FLUSH_MAX_BYTES,
            flush_interval_s=0.2,
            claim_idle_ms=2000,
            max_body_bytes=MAX_BODY_BYTES,
            read_max_bytes=READ_MAX_BYTES,
            max_deliveries=1,
        )
        s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=settings.s3_bucket)
        env = settings_env(
            settings,
            MAX_BODY_BYTES=str(MAX_BODY_BYTES),
            READ_MAX_BYTES=str(READ_MAX_BYTES),
            MAX_DELIVERIES=str(settings.max_deliveries),
            # glibc reserves 64 MiB of address space per thread arena, used or not: with one,
            # the address space follows what the process really holds.
            MALLOC_ARENA_MAX="1",
        )
        yield Backlog(settings, redis.Redis.from_url(server.url), s3, env, directory)
    finally:
        server.kill()


@pytest.fixture
def backlog(tmp_path: Path, moto_endpoint: str) -> Iterator[Backlog]:
    with open_backlog(tmp_path, moto_endpoint) as opened:
        yield opened


def run_until(
    backlog: Backlog,
    runner: subprocess.Popen,
    done: Callable[[], bool],
    timeout_s: float,
    name: str = "runner",
) -> None:
    """Wait for `done()` while the runner started as `name` lives; show its log if not."""

    def finished() -> bool:
        assert runner.poll() is None, f"the runner exited:\n{backlog.log_of(name)}"
        return done()

    try:
        wait_until(finished, timeout_s=timeout_s, interval_s=0.1, what="the backlog to drain")
    except BaseException:
        print(backlog.log_of(name))
        raise


def archived_kinds(backlog: Backlog) -> dict[str, int]:
    """How many events of each name the archive holds; fails if any is stored twice."""
    archived = archived_events(backlog.s3, backlog.settings.s3_bucket, "events/")
    ids = [event["messageId"] for event in archived]
    assert len(set(ids)) == len(ids), "events archived twice"
    return dict(Counter(event["event"] for event in archived))


def status(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure (VmPeak, VmHWM...) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def largest_entry() -> dict[bytes, bytes]:
    """As ingest writes an amplified request: many events, each with a copy of one large
    batch-level field, stamped; as close to LARGEST (all fields' bytes) as it gets."""

    def entry(pad: int) -> dict[bytes, bytes]:
        raw = [
            {"type": "track", "userId": "u", "event": "Big", "context": {"pad": "x" * pad}}
            for _ in range(EVENTS_PER_ENTRY)
        ]
        return codec.encode_entry(events.prepare(raw, events.received_at_now()))

    overhead = codec.entry_bytes(entry(0))
    fields = entry((LARGEST - overhead) // EVENTS_PER_ENTRY - 8)  # headers grow with the pad
    assert LARGEST * 0.99 < codec.entry_bytes(fields) <= LARGEST
    return fields


@pytest.fixture(scope="module")
def address_space(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> int:
    """The runner's baseline address space (VmPeak once it has archived something, so that
    every import and client is counted) plus MEMORY_MARGIN."""
    with open_backlog(tmp_path_factory.mktemp("baseline"), moto_endpoint) as backlog:
        for _ in range(2):
            event = {"type": "track", "userId": "u", "event": "Small"}
            backlog.add(codec.encode_entry(events.prepare([event], events.received_at_now())))
        runner = backlog.start_runner(None, "baseline")
        try:
            run_until(
                backlog,
                runner,
                lambda: backlog.drained() and archived_keys(backlog.s3, backlog.settings.s3_bucket),
                timeout_s=30,
                name="baseline",
            )
            baseline = status(runner.pid, "VmPeak")
        finally:
            runner.terminate()
            runner.wait(timeout=30)
    print(f"runner baseline address space: {baseline / 2**20:.0f} MiB")
    return baseline + MEMORY_MARGIN


def test_a_backlog_of_the_largest_entries_drains_under_a_memory_limit(
    backlog: Backlog, address_space: int
) -> None:
    for _ in range(BACKLOG):
        backlog.add(largest_entry())
    runner = backlog.start_runner(address_space, "runner")
    try:
        run_until(backlog, runner, backlog.drained, timeout_s=30)
        peak_rss, peak_space = status(runner.pid, "VmHWM"), status(runner.pid, "VmPeak")
    finally:
        runner.terminate()
        exit_code = runner.wait(timeout=30)
    print(
        f"drained {BACKLOG} entries of {LARGEST / 2**20:.1f} MiB within an address space of "
        f"{address_space / 2**20:.0f} MiB: peak {peak_space / 2**20:.0f} MiB, "
        f"RSS {peak_rss / 2**20:.0f} MiB"
    )
    archived = archived_kinds(backlog)
    assert archived == {"Big": BACKLOG * EVENTS_PER_ENTRY}
    assert not backlog.client.exists(dead_letter_key(backlog.settings.stream_key))
    assert exit_code == 0


def test_an_entry_larger_than_the_consumer_can_hold_is_dead_lettered_unread(
    backlog: Backlog, address_space: int
) -> None:
    """It kills every read that holds it, until its delivery limit: then Redis moves it into
    the dead-letter stream, and the runner, still alive, drains the rest."""
    key = backlog.settings.stream_key
    for _ in range(4):
        backlog.add(largest_entry())
    raw = [
        {"type": "track", "userId": "u", "event": "Huge", "context": {"pad": "x" * POISON_BYTES}}
    ]
    poison = codec.encode_entry(events.prepare(raw, events.received_at_now()))
    poison_id = backlog.add(poison)
    for _ in range(4):
        backlog.add(largest_entry())

    runner = backlog.start_runner(address_space, "runner")
    try:
        run_until(backlog, runner, backlog.drained, timeout_s=30)
    finally:
        runner.terminate()
        exit_code = runner.wait(timeout=30)

    assert archived_kinds(backlog) == {"Big": 8 * EVENTS_PER_ENTRY}
    [(_, letter)] = backlog.client.xrange(dead_letter_key(key))
    assert letter[b"original_id"] == poison_id
    kept = stream.original_fields(letter)
    assert kept.keys() == poison.keys()
    assert hashlib.sha256(kept[b"d"]).digest() == hashlib.sha256(poison[b"d"]).digest()
    [error_key] = archived_keys(backlog.s3, backlog.settings.s3_bucket, "errors/")
    body = backlog.s3.get_object(Bucket=backlog.settings.s3_bucket, Key=error_key)["Body"]
    record = json.loads(body.read())
    assert record["originalId"] == poison_id.decode()
    assert record["fields"] == {}  # the consumer never held the data
    assert (
        f"{codec.entry_bytes(poison)} bytes" in record["reason"] and "not read" in record["reason"]
    )
    assert exit_code == 0
