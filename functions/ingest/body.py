"""Reading a request body safely: content type, content encoding, and size limits.

Decompression is bounded in memory, in time and in leverage:
- it stops one byte past the limit, so a small gzip body that would inflate to gigabytes
  costs no more memory than the limit before it is refused with 413;
- its time is linear in the body: the compressed bytes are fed in chunks through a view, so
  no member's end copies the rest of the body (zlib's `unused_data` would), and a body may
  hold at most `MAX_MEMBERS` concatenated members;
- a body may expand at most `MAX_EXPANSION` times beyond `EXPANSION_FLOOR` bytes, so a few
  bytes sent never make the server parse, validate and store a megabyte.
"""

from __future__ import annotations

import zlib
from typing import Any

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge, UnsupportedMediaType
from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_content_length, get_input_stream

from shared.events import InvalidRequest, request_problem

# wbits for zlib: 16+15 reads a gzip wrapper; 15 a zlib (RFC 1950) wrapper; -15 raw deflate.
_GZIP, _ZLIB, _RAW_DEFLATE = 31, 15, -15
# SDKs send one gzip member; concatenated files (`cat a.gz b.gz`) make a few. Each member
# costs a fresh decompressor, so thousands of empty ones are work for nothing.
MAX_MEMBERS = 16
# Real batches compress 4 to 40 times (a server SDK's about 6, an analytics.js session's 500
# events 28 to 41 at level 9); 100 leaves a margin and still makes an attacker send 10 KB for
# every megabyte parsed. Gzip itself reaches about 1,000.
MAX_EXPANSION = 100
# Below this many decompressed bytes the ratio is not checked: a small body (one event with a
# long repeated property, a handful of identical test events) may compress very well, and a
# body this small costs little whatever it holds.
EXPANSION_FLOOR = 64 * 1024
# Compressed bytes handed to zlib at once: a member's end leaves at most this much in
# `unused_data`, which zlib copies.
_CHUNK_BYTES = 16 * 1024


def read_body(environ: dict[str, Any], max_bytes: int, any_content_type: bool) -> bytes:
    """The body of the WSGI request `environ` as JSON bytes, decompressed, or an HTTP error
    saying why not. Read as Flask reads it (werkzeug's stream: at most Content-Length bytes,
    413 beyond `max_bytes`), without making Flask's request object.

    With `any_content_type` the body is JSON whatever `Content-Type` says, as Segment's API
    reads it: browsers send `text/plain` (no CORS preflight), `sendBeacon` whatever its Blob
    says, and axios-based SDKs label gzip JSON `application/x-www-form-urlencoded`. A body that
    is not JSON is still refused, by the decoder, with 400."""
    if not any_content_type:
        _check_content_type(parse_options_header(environ.get("CONTENT_TYPE"))[0].lower())
    try:
        raw = _raw_body(environ, max_bytes)
    except RequestEntityTooLarge:
        raise RequestEntityTooLarge(f"body is larger than {max_bytes} bytes") from None
    encoding = environ.get("HTTP_CONTENT_ENCODING", "identity").strip().lower()
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


def _raw_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    """The body as sent, as werkzeug's input stream reads it: 413 when Content-Length is over
    `max_bytes`; when fewer bytes come, what came where the server ends the stream itself
    (`wsgi.input_terminated`: gunicorn), else 400 (ClientDisconnected). A body of a known length
    is read in one call (werkzeug's stream wraps each read in several layers: a tenth of a
    single event's request); one sent in chunks, of no stated length, is werkzeug's to bound."""
    length = get_content_length(environ)
    if length is None or length > max_bytes:
        return get_input_stream(environ, max_content_length=max_bytes).read()
    try:
        raw = environ["wsgi.input"].read(length) if length else b""
    except (OSError, ValueError):
        raise ClientDisconnected() from None
    if len(raw) < length and "wsgi.input_terminated" not in environ:
        raise ClientDisconnected()
    return raw


def _check_content_type(mimetype: str) -> None:
    # No Content-Type at all is read as JSON: simple clients often omit it.
    if not mimetype or mimetype == "application/json" or mimetype.endswith("+json"):
        return
    raise UnsupportedMediaType(f"Content-Type must be application/json, not {mimetype!r}")


def inflate(data: bytes, wbits: int, max_bytes: int) -> bytes:
    """Decompress at most `max_bytes` bytes, and at most `MAX_EXPANSION` times `data` beyond
    `EXPANSION_FLOOR`; up to `MAX_MEMBERS` concatenated members are read. Linear in `data`."""
    limit = min(max_bytes, max(EXPANSION_FLOOR, MAX_EXPANSION * len(data)))
    view = memoryview(data)
    out = bytearray()
    offset = members = 0
    while offset < len(view):
        members += 1
        if members > MAX_MEMBERS:
            message = f"compressed body has more than {MAX_MEMBERS} members; send one"
            raise request_problem("body", message)
        offset = _inflate_member(view, offset, wbits, out, limit + 1)
        if len(out) > limit:
            raise _too_large(len(data), max_bytes, limit)
    return bytes(out)


def _inflate_member(view: memoryview, offset: int, wbits: int, out: bytearray, cap: int) -> int:
    """Append the member starting at `offset` to `out`, stopping at `cap` bytes of output;
    return the offset just past the member (or anywhere once `cap` is reached)."""
    decompressor = zlib.decompressobj(wbits)
    while not decompressor.eof:
        if offset >= len(view):
            raise request_problem("body", "compressed body is truncated")
        chunk = view[offset : offset + _CHUNK_BYTES]
        offset += len(chunk)
        try:
            out += decompressor.decompress(chunk, cap - len(out))
        except zlib.error as exc:
            raise request_problem("body", f"corrupt compressed body: {exc}") from None
        if len(out) >= cap:
            return offset
    # What zlib read past the member's end belongs to the next one.
    return offset - len(decompressor.unused_data)


def _too_large(sent: int, max_bytes: int, limit: int) -> RequestEntityTooLarge:
    if limit == max_bytes:
        return RequestEntityTooLarge(f"body is larger than {max_bytes} bytes decompressed")
    return RequestEntityTooLarge(
        f"compressed body of {sent} bytes expands more than {MAX_EXPANSION} times (to over "
        f"{limit} bytes); real batches compress far less: send it uncompressed"
    )
