"""What the archive's tests share: an event as the consumer stages it (after ingest stamped it)."""

from __future__ import annotations

from typing import Any


def event(received_at: str = "2024-03-05T14:59:59.999Z", **fields: Any) -> dict[str, Any]:
    return {"type": "track", "event": "e", "userId": "u", "receivedAt": received_at, **fields}
