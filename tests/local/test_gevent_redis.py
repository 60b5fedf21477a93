"""local/gevent_redis.py: in a gevent worker, redis-py's pool check polls by system call, without
a trip through gevent's hub, and still finds a connection left with unread data (what the pool
then does with that is redis-py's). Run in a fresh interpreter: monkey-patching is for the whole
process and for good."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.fresh_process import in_a_fresh_process

if TYPE_CHECKING:  # imported here, redis-py would be imported before gevent patches
    from local.redis_server import RedisServer


def check_under_gevent(url: str) -> dict[str, Any]:
    """What the check does before and after `check_connections_at_once`, in this process
    patched as gunicorn's gevent worker patches it (before redis-py is imported)."""
    from gevent import monkey

    monkey.patch_all()
    import time

    import greenlet
    import redis

    from local.gevent_redis import check_connections_at_once

    client = redis.Redis.from_url(url)
    client.ping()
    pool = client.connection_pool

    def switches_while(check: Any) -> tuple[int, Any]:
        switches = []
        previous = greenlet.settrace(lambda event, args: switches.append(event))
        try:
            result = check()
        finally:
            greenlet.settrace(previous)
        return len(switches), result

    def unread_found() -> tuple[int, bool]:
        """A connection left with a reply unread is seen as such, at once."""
        connection = pool.get_connection()
        connection.send_command("ECHO", "left unread")
        time.sleep(0.05)  # the reply arrives
        try:
            return switches_while(connection.can_read)
        finally:
            connection.disconnect()
            pool.release(connection)

    connection = pool.get_connection()
    before, clean_before = switches_while(connection.can_read)
    pool.release(connection)
    installed = check_connections_at_once()
    connection = pool.get_connection()
    after, clean_after = switches_while(connection.can_read)
    pool.release(connection)

    def waits(timeout: float | None) -> tuple[bool, int]:
        """A poll that waits (for data a greenlet sends 30 ms later) lets other greenlets run
        meanwhile and wakes when the data comes: (woken by it, ticks of the other greenlet)."""
        import select
        import signal
        import socket

        import gevent
        from redis._parsers import hiredis

        ours, theirs = socket.socketpair()
        poller = hiredis.select.poll()
        poller.register(ours, select.POLLIN)
        ticks: list[int] = []

        def tick() -> None:
            for _ in range(3):
                ticks.append(1)
                gevent.sleep(0.005)

        def send_later() -> None:
            gevent.sleep(0.03)
            theirs.send(b"x")

        gevent.spawn(tick)
        gevent.spawn(send_later)
        signal.alarm(10)  # a poll that blocked the loop would wait for ever
        try:
            found = poller.poll(timeout)
        finally:
            signal.alarm(0)
        woken = found == [(ours.fileno(), select.POLLIN)]
        ours.close()
        theirs.close()
        return woken, len(ticks)

    def forgets_unregistered() -> list:
        """A socket unregistered is no longer watched, data waiting on it or not."""
        import select
        import socket

        from redis._parsers import hiredis

        ours, theirs = socket.socketpair()
        theirs.send(b"x")
        poller = hiredis.select.poll()
        poller.register(ours, select.POLLIN)
        poller.unregister(ours.fileno())
        found = [poller.poll(0), poller.poll(50)]
        ours.close()
        theirs.close()
        return found

    return {
        "installed": installed,
        "waiting": [waits(timeout) for timeout in (None, -1, 2000)],
        "unregistered": forgets_unregistered(),
        "switches": (before, after),
        "clean": (clean_before, clean_after),
        "unread": unread_found(),
        "again": check_connections_at_once(),
    }


def test_the_pool_check_polls_at_once_and_still_finds_unread_data(
    redis_server: RedisServer,
) -> None:
    seen = in_a_fresh_process(check_under_gevent, redis_server.url)
    assert seen["installed"] is True
    before, after = seen["switches"]
    assert before > 0  # gevent's poll goes through its hub: what this saves
    assert after == 0
    assert seen["clean"] == (False, False)
    assert seen["unread"] == (0, True)
    # Waiting polls stay gevent's: woken by the data, the other greenlet running meanwhile.
    assert seen["waiting"] == [(True, 3)] * 3
    assert seen["unregistered"] == [[], []]
    assert seen["again"] is False  # once: the parser's `select` is no longer the module


def test_without_gevent_nothing_changes() -> None:
    """The Lambda handler and the loop runner do not run under gevent: left as they are."""
    from redis._parsers import hiredis

    from local.gevent_redis import check_connections_at_once

    module = hiredis.select
    assert check_connections_at_once() is False
    assert hiredis.select is module
