"""local/gevent_appends.py: in a gevent worker, the appends of requests in flight share round
trips, and each still gets its own reply or error: an entry ID, a full backlog or a rate limit
of its own, a reloaded script, a failed connection. Run in a fresh interpreter patched as
gunicorn's gevent worker is (monkey-patching is for the whole process and for good)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tests.fresh_process import in_a_fresh_process

if TYPE_CHECKING:  # imported here, redis-py would be imported before gevent patches
    from local.redis_server import RedisServer

FIELDS = {b"v": b"1", b"n": b"1", b"d": b"\x91\x80"}


def appends_under_gevent(url: str, key: str) -> dict[str, Any]:
    from gevent import monkey

    monkey.patch_all()
    import dataclasses

    import gevent
    import redis

    from local.gevent_appends import GroupedAppends, group_appends
    from shared import token_bucket
    from shared.settings import Settings
    from shared.stream import BacklogFull, EventStream, RateLimited

    client = redis.Redis.from_url(url)
    settings = Settings(redis_url=url, stream_key=key)
    group_appends()
    stream = EventStream.from_settings(settings)
    trips: list[int] = []
    send = stream._send
    assert isinstance(send, GroupedAppends)
    original = send._send
    original_wait_s = send._wait_s
    send._send = lambda group: (trips.append(len(group)), original(group))[1]

    def add_all(streams: list[EventStream], buckets: tuple = ()) -> list[Any]:
        def one(target: EventStream) -> Any:
            try:
                return target.add(FIELDS, cost=1, buckets=buckets)
            except (BacklogFull, RateLimited, redis.RedisError) as exc:
                return type(exc).__name__

        return [job.value for job in gevent.joinall([gevent.spawn(one, s) for s in streams])]

    seen: dict[str, Any] = {}
    seen["alone"] = add_all([stream])
    seen["alone_trips"] = list(trips)
    trips.clear()

    # Each of 20 appends its own entry (its `n`): each must get its own entry's ID back.
    def add_own(index: int) -> tuple[int, Any]:
        return index, stream.add({**FIELDS, b"n": b"%d" % index}, cost=1)

    owned = [job.value for job in gevent.joinall([gevent.spawn(add_own, i) for i in range(20)])]
    seen["together"] = [entry_id for _, entry_id in owned]
    seen["own_entries"] = all(
        client.xrange(key, entry_id, entry_id)[0][1][b"n"] == b"%d" % index
        for index, entry_id in owned
    )
    seen["together_trips"] = list(trips)
    seen["length"] = client.xlen(key)
    # Again, once a group has been sent: the next requests in flight share round trips too.
    trips.clear()
    add_all([stream] * 20)
    seen["again_trips"] = list(trips)
    # An append that gave up waiting (its request answered 503) is never sent afterwards: here
    # behind a round trip that takes 0.3 s (a BLPOP that times out), waiting at most 0.05 s.
    client.delete(key, *stream.keys[1:])
    send._wait_s = 0.05
    slow = gevent.spawn(send, "BLPOP", f"{key}:nothing", "0.3")
    gevent.sleep(0.01)  # the slow trip under way: the append below waits for it
    try:
        seen["gave_up"] = add_all([stream])
    finally:
        send._wait_s = original_wait_s
    slow.join()
    gevent.sleep(0.1)  # a sender, if any, has run
    seen["gave_up_length"] = client.xlen(key)
    # A full backlog refuses the appends past it, each alone, in the same pipeline.
    client.delete(key, *stream.keys[1:])
    full = dataclasses.replace(stream, max_len=3)
    full._send = send  # the same worker's grouping
    seen["full"] = add_all([full] * 6)
    seen["full_length"] = client.xlen(key)
    # A rate limit of 2 events refuses the third and later appends of a burst.
    client.delete(key, *stream.keys[1:])
    bucket = (token_bucket.Bucket("source:test", 0.001, 2),)
    seen["limited"] = add_all([stream] * 5, bucket)
    # A Redis that lost the script: every append of the group loads it again, each written once.
    client.delete(key, *stream.keys[1:])
    client.script_flush()
    seen["reloaded"] = add_all([stream] * 5)
    seen["reloaded_length"] = client.xlen(key)
    # Redis gone: every append of the group fails, none waits for ever; then it works again.
    client.delete(key, *stream.keys[1:])
    client.config_set("requirepass", "now-locked")  # this connection stays in
    client.client_kill_filter(_type="normal", skipme=True)  # the stream's do not
    seen["refused"] = add_all([stream] * 5)
    client.config_set("requirepass", "")
    seen["after"] = add_all([stream] * 3)
    return seen


def test_appends_in_flight_share_round_trips_each_with_its_own_reply(
    redis_server: RedisServer, settings
) -> None:
    seen = in_a_fresh_process(appends_under_gevent, redis_server.url, settings.stream_key)
    [alone] = seen["alone"]
    # Sent at once, by itself (twice where this Redis had no script yet: NOSCRIPT, reloaded).
    assert isinstance(alone, bytes) and seen["alone_trips"] in ([1], [1, 1])
    ids = seen["together"]
    assert all(isinstance(entry_id, bytes) for entry_id in ids) and len(set(ids)) == 20
    assert seen["length"] == 21  # each written once
    # The first went at once; the 19 that came meanwhile went together, in fewer trips.
    assert seen["together_trips"][0] == 1 and sum(seen["together_trips"]) == 20
    assert len(seen["together_trips"]) < 20
    assert seen["own_entries"] is True  # no reply went to another request
    assert sum(seen["again_trips"]) == 20 and len(seen["again_trips"]) < 20
    assert seen["gave_up"] == ["TimeoutError"] and seen["gave_up_length"] == 0
    assert sorted(map(str, seen["full"])).count("BacklogFull") == 3
    assert seen["full_length"] == 3
    assert [type(r) is bytes for r in seen["limited"]].count(True) == 2
    assert seen["limited"].count("RateLimited") == 3
    assert all(isinstance(entry_id, bytes) for entry_id in seen["reloaded"])
    assert seen["reloaded_length"] == 5
    assert set(seen["refused"]) <= {"AuthenticationError", "ConnectionError", "ResponseError"}
    assert len(seen["refused"]) == 5
    assert all(isinstance(entry_id, bytes) for entry_id in seen["after"])


def installed_by_gunicorn_conf() -> list[str]:
    """What local/gunicorn.conf.py's post_worker_init leaves, for a gevent and a gthread worker."""
    from gevent import monkey

    monkey.patch_all()
    import runpy
    from types import SimpleNamespace

    from shared.stream import producers

    conf = runpy.run_path("local/gunicorn.conf.py")
    found = []
    for worker_class in ("gthread", "gevent"):
        producers.send_appends_with(None)
        log = SimpleNamespace(warning=lambda *args: None)
        cfg = SimpleNamespace(worker_class_str=worker_class)
        conf["post_worker_init"](SimpleNamespace(cfg=cfg, wsgi=lambda *a: [], log=log))
        grouping = producers._grouping
        found.append(f"{worker_class}: {getattr(grouping, '__name__', grouping)}")
    return found


def test_gunicorn_s_gevent_workers_group_their_appends_and_only_they() -> None:
    assert in_a_fresh_process(installed_by_gunicorn_conf) == [
        "gthread: None",
        "gevent: GroupedAppends",
    ]


def group_cut_short(url: str) -> dict[str, Any]:
    """A group whose connection Redis closes halfway: what each append got, and what Redis
    wrote (each INCR counts its writes)."""
    from gevent import monkey

    monkey.patch_all()
    import gevent
    import redis

    from local.gevent_appends import GroupedAppends
    from shared.settings import Settings
    from shared.stream import connect

    client = connect(Settings(redis_url=url))  # as ingest's: one retry of a broken connection
    client.delete("n1", "n3")
    grouped = GroupedAppends(client)

    def call(*command: Any) -> Any:
        try:
            return grouped(*command)
        except redis.RedisError as exc:
            return type(exc).__name__

    leader = gevent.spawn(call, "DEBUG", "SLEEP", "0.2")  # alone; the others queue meanwhile
    gevent.sleep(0.05)
    group = [
        gevent.spawn(call, "INCR", "n1"),
        gevent.spawn(call, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "no"),  # this one too
        gevent.spawn(call, "INCR", "n3"),
    ]
    gevent.joinall([leader, *group], timeout=30)
    return {
        "answers": [job.value for job in group],
        "written": [int(client.get(key) or 0) for key in ("n1", "n3")],
        "after": call("INCR", "n1"),
    }


def test_a_group_is_never_sent_twice(redis_server: RedisServer) -> None:
    """A group is sent once: when its connection breaks halfway, each append is answered as far
    as Redis got (a redis-py pipeline would send the whole group again on a broken connection,
    writing twice what it had seen answered), and the worker's appends go on."""
    seen = in_a_fresh_process(group_cut_short, redis_server.url)
    first, _, last = seen["answers"]
    assert first == 1  # answered before the connection went
    assert last == "ConnectionError"
    assert seen["written"] == [1, 0]  # n1 written once, n3 never reached
    assert seen["after"] == 2  # and the worker's appends go on
