"""The consumer function: drain the stream into the archive for as long as the budget allows.

Lambda calls `handler` on a schedule; `python -m local.runner` calls it in a loop. Both pass a
context whose `get_remaining_time_in_millis()` says how long this invocation may run.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from functions.consumer.sharded import ShardedDrainer
from shared import metrics
from shared.settings import Settings
from shared.status import read_stream_status
from shared.stream import REDIS_ERRORS

_emf = metrics.EmfEmitter()


class IncompleteDrain(Exception):
    """What was read could not all be archived (storage down through the budget): the entries
    stay pending and the next invocation retries them, but the invocation is an error, so
    that Lambda's Errors metric, and the alarm on it, see it."""


@functools.cache
def drainer() -> ShardedDrainer:
    """One per process, built from the environment at the first call and reused when warm."""
    return ShardedDrainer.from_settings(Settings.from_env())


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    consumer = drainer()
    summary = consumer.drain(context.get_remaining_time_in_millis)
    _emf.emit(_stream_gauges(consumer))
    if summary.unflushed_entries:
        raise IncompleteDrain(
            f"{summary.unflushed_entries} entries could not be archived and stay pending: "
            f"{summary.as_dict()}"
        )
    return summary.as_dict()


def _stream_gauges(consumer: ShardedDrainer) -> Iterator[metrics.Metric] | None:
    """On Lambda nothing scrapes the ingest function's /metrics: each invocation also reports
    the stream's backlog and freshness, so that an alarm sees them."""
    if not _emf.enabled:
        return None
    try:
        status = read_stream_status(consumer.client, consumer.settings)
    except REDIS_ERRORS:
        return None
    return metrics.stream_gauges(status)
