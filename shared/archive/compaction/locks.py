"""Leases on hours: two compactions never work on one hour at once.

An hour is locked in Redis under `<STREAM_KEY>:compaction-lock:<bucket>/<prefix>dt=.../hour=...`
by a lease of COMPACT_LEASE_S (redis-py's `Lock`), renewed by a thread while the run lives, so
the lease of a killed run ends within COMPACT_LEASE_S. Touches Redis only.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import redis
import redis.lock

from shared.archive.partitions import partition_of

log = logging.getLogger(__name__)


def namespace(stream_key: str, bucket: str, prefix: str) -> str:
    """Where the hours of the archive under `bucket/prefix` are locked: compaction and privacy
    deletions take the same locks, so neither rewrites an hour the other is working on."""
    return f"{stream_key}:compaction-lock:{bucket}/{prefix}"


class LockLost(Exception):
    """This run's lock on an hour expired and may be held by another run."""


class HourLocks:
    """Leases on hours in Redis: redis-py's `Lock` (`SET key token NX PX lease`), extended and
    released only by the holder of the token (compare-and-set in Lua), so an expired holder
    can neither free nor extend a lock another run took meanwhile."""

    def __init__(self, client: redis.Redis, namespace: str, lease_s: float) -> None:
        self.client = client
        self.namespace = namespace
        self.lease_s = lease_s

    def key(self, hour: datetime) -> str:
        return f"{self.namespace}{partition_of(hour)}"

    def acquire(self, hour: datetime) -> HourLock | None:
        """The hour's lease, renewed until released; None when another run holds it."""
        # Not thread-local: the renewing thread uses the token the acquiring thread got.
        lock = self.client.lock(
            self.key(hour), timeout=self.lease_s, blocking=False, thread_local=False
        )
        return HourLock(lock, self.lease_s) if lock.acquire() else None

    def held_until(self, hour: datetime) -> datetime | None:
        """When the lease on `hour` ends unless its holder renews it, to the second rounded
        up; None when nobody holds it (by this machine's clock, with Redis's time to live)."""
        left_ms = self.client.pttl(self.key(hour))
        if left_ms < 0:
            return None
        ends = datetime.now(UTC) + timedelta(milliseconds=left_ms)
        return ends.replace(microsecond=0) + timedelta(seconds=1 if ends.microsecond else 0)


class HourLock:
    """A held lease, renewed by a thread of its own every third of the lease until released,
    so that a step may last longer than the lease while its run lives."""

    def __init__(self, lock: redis.lock.Lock, lease_s: float) -> None:
        self.lock = lock
        self.key = lock.name
        self.lease_s = lease_s
        self._guard = threading.Lock()  # one Redis call on the lease at a time
        self._released = threading.Event()
        self._lost: str | None = None
        self._renewer = threading.Thread(target=self._keep, name=f"lease {self.key}", daemon=True)
        self._renewer.start()

    def renew(self) -> None:
        """Extend the lease to a whole one now; LockLost if it ran out meanwhile."""
        with self._guard:
            if self._lost is None and not self._released.is_set():
                try:
                    self.lock.reacquire()
                except redis.exceptions.LockNotOwnedError:
                    self._lost = f"the lease {self.key} ran out; another run may hold it"
            if self._lost is not None:
                raise LockLost(self._lost)

    def release(self) -> None:
        self._released.set()
        with self._guard:
            try:
                if self._lost is None:
                    self.lock.release()
            except redis.exceptions.LockNotOwnedError:
                pass  # it ran out: nothing of ours to free
            except redis.RedisError:
                log.warning("could not release %s; it ends by itself", self.key, exc_info=True)
        self._renewer.join()

    def _keep(self) -> None:
        while not self._released.wait(self.lease_s / 3):
            try:
                self.renew()
            except LockLost:
                return  # the run finds out at its next `renew`, before it changes anything
            except redis.RedisError:
                # Two more tries before the lease runs out.
                log.warning("could not renew %s; trying again", self.key, exc_info=True)
