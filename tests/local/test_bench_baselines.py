"""local/bench/baselines.py's floor: the append alone, through the shipped admission script with
ingest's rate-limit buckets, as one entry of the body."""

from __future__ import annotations

import dataclasses
import io

import pytest
import redis

from local.bench.baselines import create_append_only
from shared.settings import Settings
from shared.shards import rate_bucket_key


def post(app, body: bytes, address: str = "192.0.2.7") -> str:
    answered: list[str] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": address,
        "wsgi.input": io.BytesIO(body),
    }
    b"".join(app(environ, lambda status, headers: answered.append(status)))
    return answered[0]


def test_the_append_alone_writes_the_body_as_one_entry_taking_ingest_s_buckets(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Slow buckets: a bucket's key lives until it is full again (here 100 s after an event).
    limited = dataclasses.replace(
        settings,
        rate_limit_events_per_s=0.01,
        rate_limit_burst=5,
        rate_limit_address_events_per_s=0.01,
        rate_limit_address_burst=5,
    )
    app = create_append_only(limited)

    assert post(app, b'{"batch":[]}') == "202 Accepted"

    [(_, fields)] = redis_client.xrange(settings.stream_key)
    assert fields == {b"v": b"1", b"n": b"1", b"d": b'{"batch":[]}'}
    buckets = redis_client.keys(rate_bucket_key(settings.stream_key, "*"))
    assert len(buckets) == 2  # the source's and the address's, as ingest takes them


def test_the_append_alone_is_refused_as_ingest_is_past_its_bounds(settings: Settings) -> None:
    from shared.stream import BacklogFull

    app = create_append_only(dataclasses.replace(settings, stream_max_len=1))
    post(app, b"{}")
    with pytest.raises(BacklogFull):
        post(app, b"{}")
