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
    seen["together"] = add_all([stream] * 20)
    seen["together_trips"] = list(trips)
    seen["length"] = client.xlen(key)
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
    assert isinstance(alone, bytes) and seen["alone_trips"] == []  # sent at once, by itself
    ids = seen["together"]
    assert all(isinstance(entry_id, bytes) for entry_id in ids) and len(set(ids)) == 20
    assert seen["length"] == 21  # each written once
    # The first went at once; the 19 that came meanwhile went together, in fewer trips.
    assert sum(seen["together_trips"]) == 19 and len(seen["together_trips"]) < 19
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
