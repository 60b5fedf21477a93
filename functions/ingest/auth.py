"""Write keys: who may send events, and which source a request's events are recorded under.

A request carries its key as HTTP Basic user name with an empty password (every Segment SDK
does this) or as `writeKey` in the body. Keys are compared in constant time, as SHA-256
digests (so not even their length shows), against every configured key, so neither the
answer's timing nor its content tells how close a guess was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from werkzeug.exceptions import Unauthorized


class WriteKeys:
    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = [(source, _digest(key.encode())) for source, key in pairs]

    @property
    def required(self) -> bool:
        return bool(self._pairs)

    def source_of(self, authorization: str | None, body_key: object) -> str | None:
        """The source name of the request's key; None (anonymous) when no keys are configured."""
        if not self._pairs:
            return None
        presented = basic_user(authorization) if authorization else None
        if presented is None and isinstance(body_key, str):
            presented = body_key.encode()
        if not presented:
            raise Unauthorized("a valid write key is required (HTTP Basic user name)")
        match = self._source_of_key(presented)
        if match is None:
            raise Unauthorized("unknown write key")
        return match

    def knows(self, key: str) -> bool:
        """Whether `key` may send events: any key when none are configured."""
        return not self._pairs or self._source_of_key(key.encode()) is not None

    def _source_of_key(self, presented: bytes) -> str | None:
        match = None
        presented_digest = _digest(presented)
        for source, digest in self._pairs:
            if hmac.compare_digest(presented_digest, digest) and match is None:
                match = source
        return match


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def basic_user(authorization: str) -> bytes | None:
    """The user name of an HTTP Basic `Authorization` header, or None if it is not one."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(b":")[0]
