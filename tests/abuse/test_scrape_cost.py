"""A scrape of /metrics must cost Redis a small fixed amount, whatever the entries' sizes.

Each scrape reads the stream's status (shared/status.py). It used to copy entries to read one
field of each: a script pulled up to 500 whole entries into Lua to count their events, another
one entry to find an ID, and XINFO STREAM sends the first and last entries whole: with 40
entries of 8 MB, one scrape blocked Redis for 1.67 s, and anyone who can reach /metrics, or
who can make the backlog hold large entries, could do it again and again. Now the status reads
counters and IDs (the size hash, XINFO GROUPS, XPENDING's summary) and the key's ledger, whose
records are a few bytes whatever the entry.

Measured with Redis's own accounting: the CPU time of the redis-server process (INFO cpu) and
the bytes it sent (INFO stats' total_net_output_bytes) over a scrape, for a stream of 40
entries of 8 MB against one of 40 tiny entries in the same state, in the same run; the least
of several rounds, taking turns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import redis

from local.redis_server import RedisServer
from shared import metrics, stream
from shared.settings import Settings
from tests.conftest import free_port, settings_env

ENTRIES = 40
LARGE = 8 * 1024 * 1024
TINY = 100
ROUNDS = 7
# A scrape over 8 MB entries may cost Redis at most this many times one over tiny entries
# (measured: about 1.0x; the old code: hundreds of times).
MAX_CPU_RATIO = 3.0
MAX_OUTPUT_RATIO = 1.2


def fill(settings: Settings, client: redis.Redis, size: int) -> None:
    """ENTRIES entries of `size` bytes, the ingest way, read by two groups: one holds 10
    pending and 30 undelivered, the other has read nothing (every path of the status)."""
    producer = stream.producer(settings, client)
    for i in range(ENTRIES):
        producer.add({b"v": b"1", b"n": b"%d" % (i % 5 + 1), b"d": b"x" * size})
    for group in ("archiver", "warehouse"):
        stream.GroupReader(client, settings.stream_key, group, "c1").ensure_group()
    stream.GroupReader(client, settings.stream_key, "archiver", "c1").read_new(10, None)


def redis_cost(client: redis.Redis, scrape: Callable[[], bytes]) -> tuple[float, int]:
    """The redis-server process's CPU seconds and output bytes over one scrape."""

    def totals() -> tuple[float, int]:
        cpu, stats = client.info("cpu"), client.info("stats")
        return cpu["used_cpu_user"] + cpu["used_cpu_sys"], stats["total_net_output_bytes"]

    cpu_before, sent_before = totals()
    body = scrape()
    cpu_after, sent_after = totals()
    assert b"event_ingest_redis_up 1.0" in body, "Redis did not answer the scrape (in time)"
    return cpu_after - cpu_before, sent_after - sent_before


def test_a_scrape_over_8_mb_entries_costs_redis_what_one_over_tiny_entries_does(
    settings: Settings, tmp_path
) -> None:
    server = RedisServer(free_port(), tmp_path, "--appendonly", "no", "--maxmemory", "2gb").start()
    try:
        client = redis.Redis.from_url(server.url)
        env = settings_env(settings, REDIS_URL=server.url)
        tiny = Settings.from_env({**env, "STREAM_KEY": f"{settings.stream_key}-tiny"})
        large = dataclasses.replace(tiny, stream_key=f"{settings.stream_key}-large")
        fill(tiny, client, TINY)
        fill(large, client, LARGE)

        scrapes = {
            name: (lambda s=which: metrics.exposition(metrics.StreamCollector(lambda: client, s)))
            for name, which in (("tiny", tiny), ("large", large))
        }
        costs: dict[str, list[tuple[float, int]]] = {"tiny": [], "large": []}
        for _ in range(ROUNDS):
            for name, scrape in scrapes.items():
                costs[name].append(redis_cost(client, scrape))
        cpu = {name: min(c for c, _ in rounds) for name, rounds in costs.items()}
        sent = {name: min(s for _, s in rounds) for name, rounds in costs.items()}
        print(
            f"\nRedis CPU per scrape: {cpu['large'] * 1e3:.2f} ms over {ENTRIES} entries of "
            f"{LARGE:,} B, {cpu['tiny'] * 1e3:.2f} ms over {TINY} B entries "
            f"({cpu['large'] / cpu['tiny']:.2f}x); bytes sent: {sent['large']:,} and "
            f"{sent['tiny']:,} ({sent['large'] / sent['tiny']:.2f}x)"
        )
        assert cpu["large"] <= MAX_CPU_RATIO * cpu["tiny"]
        assert sent["large"] <= MAX_OUTPUT_RATIO * sent["tiny"]
    finally:
        server.kill()
