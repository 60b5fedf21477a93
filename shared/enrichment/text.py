"""Bounded text: every string enrichment stores comes from a database or a parser, not from the
request, so its length is capped here; what an event may grow by is then a constant
(`shared/enrichment/enricher.py`'s MAX_ADDED_BYTES), which ingest's size accounting adds."""

from __future__ import annotations

# UTF-8 bytes. Above every English place name of GeoLite2 (the longest country is 44 bytes) and
# every name and version ua-parser's rules write.
MAX_TEXT_BYTES = 64


def capped(value: object) -> str | None:
    """`value` if it is a non-empty string, cut to MAX_TEXT_BYTES (at a character boundary)."""
    if not isinstance(value, str) or not value:
        return None
    # Short enough whatever it holds (UTF-8 takes at most 4 bytes a character), or ASCII (which
    # `isascii` knows without reading the string): no need to encode it to count its bytes.
    if len(value) <= MAX_TEXT_BYTES // 4 or (len(value) <= MAX_TEXT_BYTES and value.isascii()):
        return value
    encoded = value.encode("utf-8", "replace")
    if len(encoded) <= MAX_TEXT_BYTES:
        return value
    return encoded[:MAX_TEXT_BYTES].decode("utf-8", "ignore")
