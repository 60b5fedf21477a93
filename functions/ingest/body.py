"""Reading a request body safely: content type, content encoding, and size limits.

Decompression is bounded: it stops one byte past the limit, so a small gzip body that would
inflate to gigabytes costs no more memory than the limit before it is refused with 413.
"""

from __future__ import annotations

import zlib

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from shared.events import InvalidRequest, request_problem

# wbits for zlib: 16+15 reads a gzip wrapper; 15 a zlib (RFC 1950) wrapper; -15 raw deflate.
_GZIP, _ZLIB, _RAW_DEFLATE = 31, 15, -15


def read_body(request: Request, max_bytes: int, any_content_type: bool) -> bytes:
    """The request's body as JSON bytes, decompressed, or an HTTP error saying why not.

    With `any_content_type` the body is JSON whatever `Content-Type` says, as Segment's API
    reads it: browsers send `text/plain` (no CORS preflight), `sendBeacon` whatever its Blob
    says, and axios-based SDKs label gzip JSON `application/x-www-form-urlencoded`. A body that
    is not JSON is still refused, by the decoder, with 400."""
    if not any_content_type:
        _check_content_type(request.mimetype)
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"body is larger than {max_bytes} bytes") from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        body = raw
    elif encoding in ("gzip", "x-gzip"):
        body = inflate(raw, _GZIP, max_bytes)
    elif encoding == "deflate":
        # HTTP's "deflate" is zlib-wrapped, but some clients send raw deflate; accept both.
        try:
            body = inflate(raw, _ZLIB, max_bytes)
        except InvalidRequest:
            body = inflate(raw, _RAW_DEFLATE, max_bytes)
    else:
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported")
    if len(body) > max_bytes:
        raise RequestEntityTooLarge(f"body is larger than {max_bytes} bytes")
    return body


def _check_content_type(mimetype: str) -> None:
    # No Content-Type at all is read as JSON: simple clients often omit it.
    if not mimetype or mimetype == "application/json" or mimetype.endswith("+json"):
        return
    raise UnsupportedMediaType(f"Content-Type must be application/json, not {mimetype!r}")


def inflate(data: bytes, wbits: int, max_bytes: int) -> bytes:
    """Decompress at most `max_bytes + 1` bytes; concatenated gzip members are read too."""
    out = bytearray()
    while data:
        decompressor = zlib.decompressobj(wbits)
        try:
            out += decompressor.decompress(data, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise request_problem("body", f"corrupt compressed body: {exc}") from None
        if len(out) > max_bytes:
            raise RequestEntityTooLarge(f"body is larger than {max_bytes} bytes decompressed")
        if not decompressor.eof:
            raise request_problem("body", "compressed body is truncated")
        data = decompressor.unused_data
    return bytes(out)
