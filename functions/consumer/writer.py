"""The consumer's archive writer: puts a flush's objects (or a dead letter) in object storage,
retrying with capped, jittered backoff while storage fails, for as long as the invocation's
budget allows; meanwhile it keeps this consumer's pending entries from looking abandoned.

Touches object storage (`ObjectStore.put`) and, to keep entries alive, the consumer group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import RetryCallState, RetryError

from functions.consumer.summary import Summary
from shared import retrying as retrying_policies
from shared import stream
from shared.archive import ObjectStore

log = logging.getLogger(__name__)

# Backoff between attempts to store a flush while object storage fails.
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 20.0


@dataclass
class ArchiveWriter:
    """Stores objects for one drain call, tallying them in its `summary`. It gives up once
    waiting for the next attempt would leave less than half of `margin_ms` of `remaining_ms`."""

    store: ObjectStore
    reader: stream.GroupReader
    summary: Summary
    claim_idle_ms: int
    remaining_ms: Callable[[], int]
    margin_ms: int
    sleep: Callable[[float], None] = time.sleep
    next_keep_alive_at: float = field(default=0.0, init=False)

    def store_all(self, objects: list[tuple[str, bytes]], content_type: str) -> bool:
        """Put every object, retrying while storage fails; False if time runs out first."""
        # A live consumer touches Redis several times per CLAIM_IDLE_MS, even while it waits.
        retrying = retrying_policies.within_budget(
            (BotoCoreError, ClientError),
            first_s=RETRY_FIRST_S,
            max_s=min(RETRY_MAX_S, self.keep_alive_interval_s()),
            remaining_ms=self.remaining_ms,
            keep_ms=self.margin_ms / 2,
            after_failure=lambda state: self._failed(objects[0][0], state),
            before_sleep=lambda _: self.keep_pending_alive(),
            sleep=self.sleep,
        )
        try:
            retrying(self._store_in_order, objects, content_type)
        except RetryError:
            return False
        return True

    def _store_in_order(self, objects: list[tuple[str, bytes]], content_type: str) -> None:
        """Put the objects left, first to last, each taken off the list once stored: a retry
        goes on from the one that failed."""
        while objects:
            key, body = objects[0]
            self.store.put(key, body, content_type)
            objects.pop(0)
            self.summary.objects_written += 1
            self.summary.bytes_written += len(body)

    def _failed(self, key: str, state: RetryCallState) -> None:
        self.summary.store_failures += 1
        log.warning("storing %s failed (%s); retrying", key, state.outcome.exception())

    def keep_alive_interval_s(self) -> float:
        return self.claim_idle_ms / 4000

    def keep_pending_alive(self) -> None:
        """While storage fails, show the other consumers that this one is slow, not dead, so
        they do not claim what it holds (and archive it a second time)."""
        now = time.monotonic()
        if now < self.next_keep_alive_at:
            return
        self.next_keep_alive_at = now + self.keep_alive_interval_s()
        try:
            held = self.reader.keep_pending_alive()
        except redis.RedisError as exc:  # Redis down too: nobody can claim meanwhile either
            log.warning("could not keep pending entries alive: %s", exc)
            return
        log.info("storage still failing; %d pending entries kept alive", held)
