"""Suppression at ingest: the events of subjects a privacy regulation suppresses are answered
as usual and never stored.

Each process keeps a copy of what is in force (`regulations.CachedView` over Redis's
`<STREAM_KEY>:privacy`, read again at most every SUPPRESSION_RELOAD_S), so that a request
costs no Redis round trip for it, and nothing is hashed while no suppression is in force.
Ingest reads suppressions from Redis only, never from the bucket: the consumer rebuilds
Redis's copy when it is lost, and drops what slipped through meanwhile.

Ingest counts the events dropped for the metrics (functions/ingest/instrumentation.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared import regulations
from shared.settings import Settings
from shared.stream import Client


class Suppression:
    """The filter one ingest process applies to each request's prepared events."""

    def __init__(self, settings: Settings, client: Callable[[], Client]) -> None:
        """`client()` gives the ingest's Redis client (made at the first request needing it)."""
        self.view = regulations.CachedView.of_redis(
            client, settings.stream_key, settings.suppression_reload_s
        )

    def kept(self, prepared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The events of `prepared` to store: all of them unless a suppression is in force."""
        view = self.view.current()
        if not view.suppressed:  # the usual case: no hashing at all
            return prepared
        return [event for event in prepared if not view.suppresses(event)]
