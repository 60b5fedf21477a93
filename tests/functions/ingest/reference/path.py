"""FROZEN: what ingest made of a request's body before issue 29 made it faster (commit e0090be:
`Ingest.__call__` from the decoded body to the stored events, with its own copy of the event
model, `reference/events.py`). The property test runs the same bodies through the app as it
is now and through this, and asks for the same events or the same refusal. Never edit it to
follow a change of the app: a difference is a change of behaviour.

Left out, because they are not what ingest's speed work touches, and have their own tests:
authentication, reading and decompressing the body (but for its size limit), rate limits,
suppression and tracking plans; enrichment is the live `Enricher` (it runs after stamping, on
the stamped events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from shared.enrichment import Enricher
from tests.functions.ingest.reference import events

_encoder = msgspec.msgpack.Encoder()
# The entry's largest size, as a multiple of MAX_BODY_BYTES (shared/codec.py at e0090be).
MAX_ENTRY_GROWTH = 5


@dataclass(frozen=True)
class Refused:
    status: int
    code: str


def reference_events(
    body: bytes,
    single: bool,
    default_type: str | None,
    source: str | None,
    enricher: Enricher,
    address: Any,
    max_body_bytes: int,
    max_event_bytes: int,
    received_at: str,
) -> bytes | Refused:
    """The events the request of `body` stored (the entry's `d`: their MsgPack, whose bytes
    keep each event's key order), or how it was refused. Keys are not required (anonymous
    mode): a malformed body is a 400."""
    if len(body) > max_body_bytes:
        return Refused(413, "too_large")
    try:
        document = events.decode_json(body)
        fields = document if isinstance(document, dict) else {}
        raw_events = [document] if single else events.batch_events(document)
        envelope = events.Envelope(
            source=source,
            sent_at=None if single else fields.get("sentAt"),
            context=None if single else fields.get("context"),
            integrations=None if single else fields.get("integrations"),
            default_type=default_type,
        )
        try:
            events.check_stored_size(len(raw_events), envelope, len(body), max_body_bytes)
        except events.TooLarge:
            return Refused(413, "too_large")
        prepared = events.prepare(
            raw_events,
            received_at,
            envelope,
            max_event_bytes=max_event_bytes if len(body) > max_event_bytes else None,
        )
    except events.InvalidRequest as exc:
        return Refused(400, exc.code)
    kept = enricher.enrich(prepared, address, len(body))
    max_stored = events.max_stored_bytes(len(body), len(prepared), source, enricher.max_added_bytes)
    try:
        packed = _encoder.encode(prepared)
    except OverflowError:
        return Refused(400, "invalid_request")
    entry_bytes = 2 + 1 + len(str(len(prepared))) + 1 + len(packed)  # v, n, d: names and values
    if entry_bytes > MAX_ENTRY_GROWTH * max_body_bytes or len(packed) > max_stored:
        return Refused(413, "too_large")
    return _encoder.encode(kept)
