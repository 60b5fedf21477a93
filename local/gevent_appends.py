"""The appends of a gevent worker's requests in flight, sent to Redis together.

Each request appends one entry: one round trip, whose socket work costs about as much CPU on
each side as the rest of a single event's request (docs/performance.md), and Redis runs its
admission script with a call's overhead each time. A gevent worker holds many requests at
once: while one greenlet waits for Redis, others reach their append. `GroupedAppends` lets the
first append of a quiet moment go at once, and sends the ones that arrive while a round trip
is under way together, as one pipeline, when it ends: a request alone waits for nothing more
than its own round trip, and under load several share one.

Each append stays its own script call, atomic and refused or accepted alone: a pipeline is not
a transaction. Each request gets its own reply or its own error (a full backlog, a rate limit,
a script error); an error of the connection fails every append of that pipeline, as it would
have failed each sent alone (redis-py's retry of a broken connection applies to the pipeline).

Installed once per gunicorn gevent worker (local/gunicorn.conf.py); the Lambda handler and the
loop runner send each append alone.
"""

from __future__ import annotations

from typing import Any

import gevent
import redis
from gevent.event import AsyncResult

from shared.stream import producers


class GroupedAppends:
    """`execute_command` for a worker's appends: the calls made while a round trip is under way
    go together in the next one."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._waiting: list[tuple[tuple, AsyncResult]] = []
        self._sending = False

    def __call__(self, *command: Any) -> Any:
        if not self._sending:  # a quiet moment: this append goes at once, by itself
            self._sending = True
            try:
                return self.client.execute_command(*command)
            finally:
                self._send_the_waiting()
        reply = AsyncResult()
        self._waiting.append((command, reply))
        return reply.get()

    def _send_the_waiting(self) -> None:
        """What arrived during the last round trip, sent by a greenlet of its own: the one that
        made that trip answers its request now."""
        if self._waiting:
            gevent.spawn(self._send_while_waiting)
        else:
            self._sending = False

    def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                self._send(group)
        finally:
            self._sending = False

    def _send(self, group: list[tuple[tuple, AsyncResult]]) -> None:
        """Send `group` as one pipeline and give each append its reply or error. Whatever
        happens, every one of them is answered: a request must never wait for ever."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for command, _ in group:
                pipe.execute_command(*command)
            answers = pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed, or the worker is stopping
            for _, reply in group:
                reply.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, reply), answer in zip(group, answers, strict=True):
            if isinstance(answer, Exception):
                reply.set_exception(answer)
            else:
                reply.set(answer)


def group_appends() -> None:
    """From now on, this process's event streams send their appends grouped."""
    producers.send_appends_with(GroupedAppends)
