"""redis-py's pool check under gevent, at the cost of one system call.

Before lending a connection, redis-py's pool checks that nothing is left unread on it
(`Connection.can_read()`: a `select.poll` with a zero timeout). gevent's monkey-patching makes
that poll cooperative: watchers started, a timer, a trip through the hub, for a check that never
waits. In the gevent workers it took 6% of the CPU of a single-event request, 3% of a 100-event
one (docs/performance.md). A zero-timeout poll cannot block, so the original system call makes
the same check at once; a poll with a timeout (redis-py's pub/sub, which ingest does not use)
stays gevent's, which waits without blocking the worker. (redis-py 8.1's pool then ignores what
the check found while its maintenance notifications are on "auto", its default: the check is
paid for on every request all the same.) The system call also reports what gevent's poll does
not (POLLHUP, POLLRDHUP): a connection the server closed reads as closed at checkout, as it
does without gevent.

Called once per gunicorn gevent worker (local/gunicorn.conf.py). Nothing else changes: the
Lambda handler and the loop runner do not run under gevent.
"""

from __future__ import annotations

import select
from typing import Any

from gevent import monkey

_ORIGINAL_POLL = monkey.get_original("select", "poll")
_DEFAULT_MASK = select.POLLIN | select.POLLPRI | select.POLLOUT  # as select.poll's register


class _Poll:
    """`select.poll`'s interface: a zero-timeout poll by the system call, any other (None, a
    negative or a positive timeout) by gevent's cooperative poll, made only then."""

    def __init__(self) -> None:
        self._at_once = _ORIGINAL_POLL()
        self._registered: dict[int, int] = {}  # fd -> event mask

    def register(self, fd: Any, eventmask: int = _DEFAULT_MASK) -> None:
        self._at_once.register(fd, eventmask)
        self._registered[_fileno(fd)] = eventmask

    modify = register

    def unregister(self, fd: Any) -> None:
        self._at_once.unregister(fd)
        del self._registered[_fileno(fd)]

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        if timeout == 0:
            return self._at_once.poll(0)
        cooperative = select.poll()
        for fd, eventmask in self._registered.items():
            cooperative.register(fd, eventmask)
        return cooperative.poll(timeout)


def _fileno(fd: Any) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


class _Select:
    """The `select` module as redis-py's parser sees it: the same, but for `poll`."""

    poll = _Poll

    def __getattr__(self, name: str) -> Any:
        return getattr(select, name)


def check_connections_at_once() -> bool:
    """Make redis-py's readiness checks poll by system call when they do not wait. False, and
    nothing changed, unless gevent has patched `select` and redis-py's hiredis parser checks
    with `select.poll` as this expects (a later redis-py may not)."""
    from redis._parsers import hiredis
    from redis.utils import HIREDIS_AVAILABLE  # else the parser is Python's, which never polls

    expected = getattr(hiredis, "select", None) is select and getattr(hiredis, "_HAS_POLL", False)
    if not (monkey.is_module_patched("select") and HIREDIS_AVAILABLE and expected):
        return False
    hiredis.select = _Select()
    return True
