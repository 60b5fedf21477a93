"""What the consumer never archives: the events of subjects a privacy regulation covers
(suppressed, or of a deletion not yet finished), which ingest let through before it knew of
the regulation, or which were in the stream before it was accepted.

The bucket holds the regulations and Redis only a copy of what they put in force
(`<STREAM_KEY>:privacy`). Each drain first makes sure Redis holds it, rebuilding it from the
bucket when it is missing (a Redis restarted empty, a failover that lost it); if the bucket
cannot be read then, the drain fails before anything is archived. Events are then checked
against a per-process copy read again at most every SUPPRESSION_RELOAD_S, shared by the
drainers of every shard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from shared import regulations, stream
from shared.archive import ObjectStore
from shared.archive.privacy.store import RegulationStore
from shared.regulations import PrivacyView
from shared.settings import Settings
from shared.stream import Client

log = logging.getLogger(__name__)


class PrivacyFilter:
    """The regulations in force, for one consumer process."""

    def __init__(self, settings: Settings, client: Callable[[], Client], store: ObjectStore):
        """`client()` is the consumer's current Redis client (a sharded drain may replace it)."""
        self.stream_key = settings.stream_key
        self.client = client
        self.regulations = RegulationStore(store, settings.s3_prefix)
        self.view = regulations.CachedView.of_redis(
            client, settings.stream_key, settings.suppression_reload_s
        )
        # Read from the bucket while Redis is too full to hold it (None: Redis holds it).
        self.unpublished: PrivacyView | None = None
        self._ensuring = threading.Lock()  # the shards' drainers start together: one rebuild

    def ensure_published(self) -> None:
        """Redis holds the view, rebuilt from the bucket if it was lost: one field looked at
        while it is there."""
        name = regulations.view_key(self.stream_key)
        with self._ensuring:
            if self.client().hexists(name, regulations.KEY_FIELD):
                self.unpublished = None
                return
            try:
                self.regulations.ensure_published(self.client(), self.stream_key)
                self.unpublished = None
            except redis.ResponseError as exc:
                if not stream.out_of_memory(exc):
                    raise
                # A full Redis must still be drained (that frees it): with the bucket's view.
                log.warning("Redis is full: the privacy view is read from the bucket meanwhile")
                self.unpublished = self.regulations.in_force()

    def kept(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events of an entry to archive: all of them while nothing is in force."""
        view = self.view.current() if self.unpublished is None else self.unpublished
        if view.empty:
            return events
        return [event for event in events if not view.drops(event)]
