"""Write keys: who may send events, and which source a request's events are recorded under.

A request carries its key in one of the places SDKs put it: the HTTP Basic user name with an
empty password (most SDKs), `writeKey` in the JSON body (analytics.js, analytics-python, the
Swift and Kotlin SDKs, which send no header; OAuth clients send a Bearer token beside it), or
`?writeKey=` in the URL (RudderStack's beacon, which can set neither). Keys are compared in
constant time, as SHA-256 digests (so not even their length shows), against every configured
key, so neither the answer's timing nor its content tells how close a guess was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable

from werkzeug.exceptions import Unauthorized

from shared import secrets
from shared.secrets import CachedSecret
from shared.settings import Settings, write_keys_from_secret


class WriteKeys:
    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = [(source, _digest(key.encode())) for source, key in pairs]

    @property
    def required(self) -> bool:
        return bool(self._pairs)

    def source_of(self, key: object) -> str | None:
        """The source name of `key`; None (anonymous) when no keys are configured."""
        if not self._pairs:
            return None
        if isinstance(key, str):
            key = key.encode()
        if not key or not isinstance(key, bytes):
            raise Unauthorized("a valid write key is required (HTTP Basic user name)")
        source = self._source_of_key(key)
        if source is None:
            raise Unauthorized("unknown write key")
        return source

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


class RotatingWriteKeys:
    """The write keys of WRITE_KEYS_SECRET, rebuilt when the secret's value changes (it is
    read again as it ages, and a malformed new value is refused: shared/secrets.py)."""

    def __init__(self, secret: CachedSecret) -> None:
        self._secret = secret
        self._pairs = secret.value()
        self._keys = WriteKeys(self._pairs)

    def __call__(self) -> WriteKeys:
        pairs = self._secret.value()
        if pairs is not self._pairs:  # the same object until a refresh: one comparison
            self._pairs, self._keys = pairs, WriteKeys(pairs)
        return self._keys


def write_keys_of(settings: Settings) -> Callable[[], WriteKeys]:
    """What gives the write keys in force: fixed ones (WRITE_KEYS), or the secret's."""
    if settings.write_keys_secret is None:
        fixed = WriteKeys(settings.write_keys)
        return lambda: fixed
    secret = secrets.cached(
        settings.write_keys_secret, settings.secrets_refresh_s, write_keys_from_secret
    )
    return RotatingWriteKeys(secret)


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def key_outside_body(authorization: str | None, query_key: str | None) -> bytes | None:
    """The key a request presents before its body: HTTP Basic's user name, else `?writeKey=`.
    Another scheme (an OAuth Bearer token) presents none: its key is in the body."""
    if authorization:
        user = basic_user(authorization)
        if user is not None:
            return user
    return query_key.encode() if query_key is not None else None


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
