"""The consumer's invocation over every key of the logical stream: `ShardedDrainer` runs one
single-key `Drainer` (functions/consumer/drain.py) per key, on a thread each, within the same
budget, sizes its Redis pool for them, and retires keys a previous STREAM_SHARDS wrote.

Touches Redis (the registry of keys, through shared/shards.py) and, through its drainers, the
consumer groups and object storage.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import replace

from functions.consumer.drain import Drainer, RemainingMs
from functions.consumer.privacy import PrivacyFilter
from functions.consumer.sizing import buffering_share, connections_needed
from functions.consumer.summary import Summary
from shared import shards, stream
from shared.archive import ObjectStore
from shared.settings import Settings

log = logging.getLogger(__name__)


class ShardedDrainer:
    """Drains every key of the logical stream (shared/shards.py: the STREAM_SHARDS shards, and
    any key a previous STREAM_SHARDS wrote): one Drainer per key, all side by side within the
    same budget, so that one shard's backlog never waits behind another's. Every consumer
    drains every shard; the group on each shard shares its entries among them, and claims
    from those that went away, exactly as on a single stream. With one key it is that key's
    Drainer alone, as before shards existed.

    Its Redis pool holds a connection for each of those threads (`connections_needed`), more
    than REDIS_MAX_CONNECTIONS when there are many keys: a thread waiting for a connection
    while another's blocking read holds it would fail the invocation after REDIS_TIMEOUT_S.
    Connections are cheap for Redis (maxclients is 10,000, 65,000 on ElastiCache), and the
    threads mostly wait on their sockets; fewer threads taking shards in turn would make each
    shard wait for the others' reads."""

    def __init__(self, settings: Settings, client: stream.Client, store: ObjectStore) -> None:
        self.settings = settings
        self.client = client
        # What `client` was made with (`stream.connect(settings)`).
        self.pool_size = settings.redis_max_connections
        self.store = store
        self.consumer = settings.consumer_name or stream.unique_consumer_name()
        self.drainers: dict[str, Drainer] = {}
        # One copy of the regulations in force for every shard's drainer.
        self.privacy = PrivacyFilter(settings, lambda: self.client, store)

    @classmethod
    def from_settings(cls, settings: Settings) -> ShardedDrainer:
        needed = connections_needed(settings.stream_shards)
        sized = replace(settings, redis_max_connections=max(settings.redis_max_connections, needed))
        return cls(sized, stream.connect(sized), ObjectStore.from_settings(settings))

    def drain(self, remaining_ms: RemainingMs) -> Summary:
        keys = shards.keys_to_drain(
            self.client, self.settings.stream_key, self.settings.stream_shards
        )
        self._make_room(len(keys))
        drainers = [self._drainer(key) for key in keys]
        hints = buffering_share(self.settings, len(drainers))  # for this call's keys
        for drainer in drainers:
            drainer.settings = hints
        if len(drainers) == 1:
            return drainers[0].drain(remaining_ms)
        with ThreadPoolExecutor(len(drainers), thread_name_prefix="shard") as pool:
            runs = dict(
                zip(keys, (pool.submit(d.drain, remaining_ms) for d in drainers), strict=True)
            )
            wait(runs.values())
        failed = [
            run.exception()
            for key, run in runs.items()
            if run.exception() is not None and not self._retired_meanwhile(key, run.exception())
        ]
        if failed:  # the other shards were drained; the failed one's entries stay pending
            raise failed[0]
        self._retire(keys)
        return Summary.total([run.result() for run in runs.values() if run.exception() is None])

    def _make_room(self, keys: int) -> None:
        """A pool with a connection for every thread draining `keys` keys: more than
        STREAM_SHARDS asked for while the keys of a previous STREAM_SHARDS are drained too."""
        needed = connections_needed(keys)
        if needed <= self.pool_size:
            return
        log.info("%d keys to drain: a pool of %d Redis connections", keys, needed)
        self.settings = replace(self.settings, redis_max_connections=needed)
        previous, self.client = self.client, stream.connect(self.settings)
        self.pool_size = needed
        self.drainers.clear()  # their readers use the previous client
        previous.close()

    def _retired_meanwhile(self, key: str, error: BaseException) -> bool:
        """Another consumer removed this retired key while this one drained it: nothing was
        left in it, so its error (NOGROUP) is no failure."""
        current = shards.shard_keys(self.settings.stream_key, self.settings.stream_shards)
        if key in current or "NOGROUP" not in str(error) or self.client.exists(key):
            return False
        self.drainers.pop(key, None)
        return True

    def _retire(self, keys: list[str]) -> None:
        """Remove the keys a previous STREAM_SHARDS wrote, once they are done with."""
        for key in keys:
            if shards.retire_if_drained(
                self.client, self.settings.stream_key, self.settings.stream_shards, key
            ):
                log.info("removed %s: drained, and no longer written", key)
                self.drainers.pop(key, None)

    def _drainer(self, key: str) -> Drainer:
        if key not in self.drainers:
            self.drainers[key] = Drainer.for_key(
                self.settings, self.client, self.store, key, self.consumer, self.privacy
            )
        return self.drainers[key]
