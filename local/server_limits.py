"""Bounds the server puts on each client, beyond what gunicorn's settings give.

gunicorn's gevent worker bounds how long a client may take to send a request's headers (its
`keepalive` setting times every header read, the first request's included) and how long an idle
keep-alive connection stays open. Nothing bounds the body: a client that sends it a byte at a
time would hold its greenlet and socket for as long as it likes. `BodyDeadline` gives the body
a deadline; a client that misses it gets `408` and its connection is closed after the answer.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from werkzeug.exceptions import RequestTimeout


class BodyDeadline:
    """WSGI middleware: every read of the request body must end within `seconds` of the
    request's start, or raise `RequestTimeout`, which the app answers as any HTTP error."""

    def __init__(self, app: Callable, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        environ["wsgi.input"] = _InputWithDeadline(
            environ["wsgi.input"], self.seconds, environ.get("gunicorn.socket")
        )
        return self.app(environ, start_response)


class _InputWithDeadline:
    def __init__(self, stream: Any, seconds: float, client: socket.socket | None) -> None:
        self._stream = stream
        self._deadline = time.monotonic() + seconds
        self._seconds = seconds
        self._client = client

    def read(self, size: int | None = -1) -> bytes:
        return self._before_deadline(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._before_deadline(self._stream.readline, size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._before_deadline(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _before_deadline(self, read: Callable, argument: int | None) -> Any:
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise gevent.Timeout()
            with gevent.Timeout(remaining):
                return read(argument)
        except gevent.Timeout:
            self._stop_reading()
            raise RequestTimeout(f"the body did not arrive within {self._seconds:g} s") from None

    def _stop_reading(self) -> None:
        """Once answered, the connection ends: gunicorn would otherwise wait for the rest of
        the body before reading a next request. Writing the answer still works."""
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.shutdown(socket.SHUT_RD)


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards `wanted` (never above the hard
    limit): each connection is a file descriptor. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
