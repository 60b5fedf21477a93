"""gzip-compressed NDJSON: one line per event, as the client sent it plus what the server added.

Staged as each entry's lines; `nbytes` is their length, the size of the object once gunzipped.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec

from shared.archive.partitions import UnarchivableEvent

SUFFIX = ".ndjson.gz"
CONTENT_TYPE = "application/x-ndjson"

_json_encoder = msgspec.json.Encoder()


def stage(events: list[dict[str, Any]]) -> tuple[bytes, int]:
    """The events' lines and their size; UnarchivableEvent for an event JSON cannot hold."""
    with as_json():
        lines = encode_lines(events)
    return lines, len(lines)


@contextmanager
def as_json() -> Iterator[None]:
    """Encoding values as JSON within: UnarchivableEvent for one JSON cannot hold (a map whose
    keys are not text or numbers, or nested deeper than the encoder goes: MsgPack has them,
    so an entry may)."""
    try:
        yield
    except (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError) as exc:
        raise UnarchivableEvent(f"cannot be written as JSON: {exc}") from exc


def encode(staged: list[bytes], level: int = 3) -> bytes:
    return compress(staged, level)


def encode_lines(events: list[dict[str, Any]]) -> bytes:
    """NDJSON: one line per event, each ending in a newline."""
    return _json_encoder.encode_lines(events)


def compress(chunks: list[bytes], level: int = 3) -> bytes:
    # mtime=0: the same lines always give the same bytes, so a retried object is identical.
    return gzip.compress(b"".join(chunks), compresslevel=level, mtime=0)
