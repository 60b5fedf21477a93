"""Which partition an event belongs to: Hive-style `dt=YYYY-MM-DD/hour=HH/` of the server's
`receivedAt` (UTC), so Athena, Spark or DuckDB can prune by `dt` and `hour`."""

from __future__ import annotations

from typing import Any


class UnarchivableEvent(ValueError):
    """An event the archive cannot place (no usable `receivedAt`)."""


def partition_path(event: dict[str, Any]) -> str:
    """Hive-style partition of an event by the server's `receivedAt` (ISO-8601 UTC)."""
    received_at = event.get("receivedAt")
    # Shape check, not a full parse: the server wrote this string as YYYY-MM-DDTHH:MM:SS.mmmZ.
    if not (
        isinstance(received_at, str)
        and len(received_at) >= 13
        and received_at[4] == "-"
        and received_at[10] == "T"
    ):
        raise UnarchivableEvent(f"event has no usable receivedAt: {received_at!r}")
    return f"dt={received_at[:10]}/hour={received_at[11:13]}/"
