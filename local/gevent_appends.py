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
a script error). A group is sent once, never again by itself: if the connection breaks or times
out, the appends whose replies came are answered with them, and the others with the error (a
503: the client retries, and what Redis wrote meanwhile may be stored twice, never lost). An
append that gives up waiting before its group is sent (a 503 too) is taken out, never sent. A
redis-py pipeline would send the whole group again after a broken connection, writing twice
the appends it had already seen answered.

Installed once per gunicorn gevent worker (local/gunicorn.conf.py); the Lambda handler and the
loop runner send each append alone.
"""

from __future__ import annotations

import contextlib
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
        self._sender: gevent.Greenlet | None = None
        # How long an append may wait for its group: the round trip under way and its own.
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._wait_s = None if timeout is None else 2 * timeout + 1

    def __call__(self, *command: Any) -> Any:
        if self._sending and self._sender is not None and self._sender.dead:
            # Its sender was killed before it could say it is done (a sender that ends says so,
            # and is forgotten: see _send_while_waiting).
            self._sending, self._sender = False, None
        if not self._sending:  # a quiet moment: this append goes at once, by itself
            self._sending = True
            alone = AsyncResult()
            try:
                # As a group of one: sent once (redis-py's own send would try again after a
                # broken connection, writing twice what Redis had run), and with less of
                # redis-py's machinery around it.
                self._send([(command, alone)])
            finally:
                self._send_the_waiting()
            return alone.get()  # answered already: its reply, or its error raised
        reply = AsyncResult()
        waiting = (command, reply)
        self._waiting.append(waiting)
        try:
            return reply.get(timeout=self._wait_s)
        except gevent.Timeout:
            # Not yet taken into a group: taken out, so that it is never sent after its request
            # was answered 503 (the client's retry would store it twice).
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiting)
            raise redis.TimeoutError("no reply from Redis for an append sent with others") from None

    def _send_the_waiting(self) -> None:
        """What arrived during the last round trip, sent by a greenlet of its own: the one that
        made that trip answers its request now."""
        if self._waiting:
            self._sender = gevent.spawn(self._send_while_waiting)
        else:
            self._sending = False

    def _send_while_waiting(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                self._send(group)
        finally:
            # Forgotten as it ends: a dead sender still named here would read as one killed
            # before it ran, and every append after it would go alone.
            self._sending, self._sender = False, None

    def _send(self, group: list[tuple[tuple, AsyncResult]]) -> None:
        """Send `group` once, on one pooled connection, and give each append its reply or its
        error as it comes. Whatever happens, every one of them is answered: a request must
        never wait for ever."""
        answered = 0
        try:
            pool = self.client.connection_pool
            connection = pool.get_connection()
            try:
                connection.send_packed_command(connection.pack_commands([c for c, _ in group]))
                for _, reply in group:
                    try:
                        answer = connection.read_response()
                    except redis.ResponseError as exc:  # this append's own: the rest read on
                        reply.set_exception(exc)
                    else:
                        reply.set(answer)
                    answered += 1
            except BaseException:
                connection.disconnect()  # no reply left half read on a pooled connection
                raise
            finally:
                pool.release(connection)
        except BaseException as exc:  # the connection failed, or the worker is stopping
            failure = exc if isinstance(exc, Exception) else redis.ConnectionError("stopping")
            for _, reply in group[answered:]:
                reply.set_exception(failure)
            if not isinstance(exc, Exception):
                raise


def group_appends() -> None:
    """From now on, this process's event streams send their appends grouped."""
    producers.send_appends_with(GroupedAppends)
