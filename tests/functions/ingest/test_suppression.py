"""Suppression at ingest: a suppressed subject's events are answered as usual (2xx, the same
body) and never appended; counted in /metrics and EMF; appended again once unsuppressed.

Through the real app (Flask's test client, then gunicorn's workers), a real redis-server, and
regulations accepted into moto's in-process S3 by the real RegulationStore.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pytest
import redis
import urllib3
from flask.testing import FlaskClient

from functions.ingest.app import create_app
from shared import codec, metrics, regulations
from shared.archive import ObjectStore
from shared.archive.privacy.store import RegulationStore
from shared.settings import Settings
from tests.conftest import gunicorn_serving
from tests.metrics_samples import samples, value

RELOAD_S = 0.2
SUPPRESSED = "event_ingest_events_suppressed_total"


def track(**ids: Any) -> dict[str, Any]:
    return {"type": "track", "event": "Viewed", **ids}


@pytest.fixture
def quick(settings: Settings) -> Settings:
    return dataclasses.replace(settings, suppression_reload_s=RELOAD_S, metrics_public=True)


@pytest.fixture
def client(quick: Settings) -> FlaskClient:
    return create_app(quick).test_client()


@pytest.fixture
def store(s3: Any, quick: Settings) -> RegulationStore:
    return RegulationStore(ObjectStore(s3, quick.s3_bucket), quick.s3_prefix)


def regulate(store, redis_client, settings, kind, ids, subject="USER_ID"):
    return store.accept(
        redis_client,
        settings.stream_key,
        regulation_type=kind,
        subject_type=subject,
        subject_ids=ids,
    )


def appended(redis_client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every event of every entry in the stream, in order."""
    found = []
    for _, fields in redis_client.xrange(settings.stream_key):
        found += codec.decode_entry(fields)
    return found


def total(found: dict, name: str) -> float:
    """A counter's samples added up over every label (the routes)."""
    return sum(v for (sample, _), v in found.items() if sample == name)


def gained(client: FlaskClient, before: dict, name: str, **labels: str) -> float:
    after = samples(client.get("/metrics").text)
    return value(after, name, **labels) - value(before, name, **labels)


def test_a_suppressed_user_is_answered_as_usual_and_never_appended(
    client, store, quick, redis_client
) -> None:
    # A first request reads the view (nothing in force yet): the regulation below must reach
    # this process by its reload, not by a first read.
    assert client.post("/v1/track", json=track(userId="42")).status_code == 200
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["42"])
    time.sleep(RELOAD_S * 1.5)
    before = samples(client.get("/metrics").text)

    as_text = client.post("/v1/track", json=track(userId="42"))
    as_integer = client.post("/batch", json={"batch": [track(userId=42), track(userId="42")]})

    assert (as_text.status_code, as_text.json) == (200, {"success": True})
    assert (as_integer.status_code, as_integer.json) == (202, {"accepted": 2})
    assert redis_client.xlen(quick.stream_key) == 1  # the request before the regulation
    after = samples(client.get("/metrics").text)
    assert total(after, SUPPRESSED) - total(before, SUPPRESSED) == 3
    assert gained(client, before, SUPPRESSED, route="/batch") == 2
    assert gained(client, before, "event_ingest_events_accepted_total", route="/batch") == 0


def test_a_mixed_batch_appends_only_the_others(client, store, quick, redis_client) -> None:
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["42"])
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["anon-9"], subject="ANONYMOUS_ID")
    before = samples(client.get("/metrics").text)
    batch = [
        track(userId=42),
        track(userId="7"),
        track(anonymousId="anon-9"),  # suppressed by its anonymousId ...
        track(userId="8", anonymousId="anon-9"),  # ... whatever its userId
        track(userId="anon-9"),  # an anonymousId suppressed, not this userId
        track(anonymousId="anon-1", userId="42"),
    ]

    answer = client.post("/v1/batch", json={"batch": batch})

    assert (answer.status_code, answer.json) == (200, {"success": True})
    [entry] = redis_client.xrange(quick.stream_key)
    kept = codec.decode_entry(entry[1])
    assert [(e.get("userId"), e.get("anonymousId")) for e in kept] == [
        ("7", None),
        ("anon-9", None),
    ]
    assert all(e["messageId"] and e["receivedAt"] for e in kept)  # stamped as usual
    route = "/v1/batch"
    assert gained(client, before, SUPPRESSED, route=route) == 4
    assert gained(client, before, "event_ingest_events_accepted_total", route=route) == 2


def test_after_unsuppress_and_the_reload_events_are_appended_again(
    client, store, quick, redis_client
) -> None:
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["42", "43"])
    assert client.post("/v1/identify", json={"userId": "42"}).status_code == 200
    assert redis_client.xlen(quick.stream_key) == 0

    regulate(store, redis_client, quick, "UNSUPPRESS", ["42"])
    time.sleep(RELOAD_S * 1.5)
    assert client.post("/v1/identify", json={"userId": "42"}).status_code == 200
    assert client.post("/v1/identify", json={"userId": "43"}).status_code == 200  # still

    assert [e["userId"] for e in appended(redis_client, quick)] == ["42"]


def test_nothing_is_hashed_while_no_suppression_is_in_force(
    client, store, quick, redis_client, monkeypatch
) -> None:
    """The fast path: with only a deletion in force (the consumer's business), ingest hashes
    no ID; with a suppression, it does."""
    hashed = []
    real = regulations.subject_hash
    monkeypatch.setattr(regulations, "subject_hash", lambda *a: hashed.append(a) or real(*a))
    regulate(store, redis_client, quick, "DELETE_ONLY", ["42"])
    hashed.clear()  # accepting hashes the subjects it keeps

    assert client.post("/batch", json={"batch": [track(userId="42")] * 3}).status_code == 202
    assert hashed == [] and len(appended(redis_client, quick)) == 3

    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["9"])
    time.sleep(RELOAD_S * 1.5)
    hashed.clear()
    assert client.post("/batch", json={"batch": [track(userId="42")]}).status_code == 202
    assert hashed and len(appended(redis_client, quick)) == 4


def test_on_lambda_the_count_leaves_as_emf(client, store, quick, redis_client) -> None:
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["42"])
    lines: list[str] = []
    emitter = metrics.EmfEmitter(lines.append, enabled=True)
    emitter.emit()  # what came before
    lines.clear()

    assert client.post("/batch", json={"batch": [track(userId="42")] * 2}).status_code == 202
    emitter.emit()

    documents = [json.loads(line) for line in lines]
    [document] = [d for d in documents if SUPPRESSED in d]
    assert document[SUPPRESSED] == 2
    assert document["route"] == "/batch"
    assert not [d for d in documents if "event_ingest_events_accepted_total" in d]


def test_through_gunicorn_the_workers_suppress_and_metrics_add_them_up(
    store, quick, redis_client
) -> None:
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["42"])
    with gunicorn_serving(quick, SUPPRESSION_RELOAD_S=str(RELOAD_S), METRICS_PUBLIC="true") as url:
        http = urllib3.PoolManager(retries=False, timeout=5)
        for _ in range(8):  # a new connection each: spread over both workers
            answer = http.request(
                "POST",
                f"{url}/v1/track",
                json=track(userId="42"),
                headers={"Connection": "close"},
            )
            assert (answer.status, answer.json()) == (200, {"success": True})
        assert redis_client.xlen(quick.stream_key) == 0
        found = samples(http.request("GET", f"{url}/metrics").data.decode())
    assert total(found, SUPPRESSED) == 8


def test_a_request_refused_without_suppression_is_refused_with_it(
    client, store, quick, redis_client
) -> None:
    """Suppression changes what is stored, never the answer: the same 400, naming the same
    event, whoever the subject is."""
    regulate(store, redis_client, quick, "SUPPRESS_ONLY", ["42"])
    too_large_integer = {"n": 2**70}

    def answer(subject: str) -> tuple[int, Any]:
        batch = [track(userId="7"), track(userId=subject, properties=too_large_integer)]
        response = client.post("/batch", json={"batch": batch})
        return response.status_code, response.json

    status, body = answer("42")
    assert (status, body) == answer("8")
    assert status == 400 and [p["index"] for p in body["problems"]] == [1]
    assert redis_client.xlen(quick.stream_key) == 0
