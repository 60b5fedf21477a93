"""How an event's value reads as text: the archive's text columns (`columns.TEXT_FIELDS`) and
privacy matching (`regulations`) read IDs the same way, so `123` and `"123"` are one ID.
Neither side of `shared/`: both use it."""

from __future__ import annotations

from typing import Any

import msgspec

_json = msgspec.json.Encoder()


def as_text(value: Any) -> str:
    """A string as it is, an integer in decimal, anything else as its JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _json.encode(value).decode()
