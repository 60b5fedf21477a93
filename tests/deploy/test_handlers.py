"""Every Handler in template.yaml, imported from its function's package and invoked as Lambda
invokes it: the ingest handler with the sample API Gateway and ALB events in
functions/ingest/events/, the consumer handler with the sample schedule event and a context
whose time runs out, the privacy handler with its schedule event (moto's Athena answering as
the test tells it) and the admin handler with its sample request, against a real redis-server
(and moto's server). The compactor's is invoked in tests/functions/compactor/."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
import urllib3

from local.redis_server import RedisServer
from local.s3 import FAKE_CREDENTIALS
from shared import codec, regulations
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.events import received_at_now
from shared.settings import Settings
from tests.archives import ev, write_ndjson
from tests.athena_answers import Row, answer
from tests.conftest import archived_events, settings_env
from tests.deploy.conftest import ROOT, invoke, serverless_functions

INGEST_EVENTS = ROOT / "functions" / "ingest" / "events"
CONSUMER_EVENTS = ROOT / "functions" / "consumer" / "events"
# The sample events authenticate with this key (HTTP Basic, the key as the user name).
SAMPLE_WRITE_KEYS = "samples:sample-write-key"


def sample(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def body_of(event: dict[str, Any]) -> bytes:
    body = event["body"].encode()
    return base64.b64decode(body) if event.get("isBase64Encoded") else body


def sent_message_ids(event: dict[str, Any]) -> list[str]:
    return [e["messageId"] for e in json.loads(body_of(event))["batch"]]


def handler_of(template: dict[str, Any], name: str) -> str:
    return serverless_functions(template)[name]["Properties"]["Handler"]


# --- ingest -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ingest_settings(redis_server: RedisServer) -> Settings:
    return Settings(redis_url=redis_server.url, stream_key=f"events-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def ingest_env(ingest_settings: Settings) -> dict[str, str]:
    return settings_env(ingest_settings, WRITE_KEYS=SAMPLE_WRITE_KEYS)


@pytest.fixture(scope="module")
def stream_events(redis_server: RedisServer, ingest_settings: Settings) -> Callable[[str], list]:
    """The events of each entry of a stream, in order."""
    client = redis.Redis.from_url(redis_server.url)

    def entries(key: str = ingest_settings.stream_key) -> list[list[dict[str, Any]]]:
        return [codec.decode_entry(fields) for _, fields in client.xrange(key)]

    return entries


@pytest.fixture(scope="module")
def stream(stream_events: Callable[[str], list]) -> Callable[[str], list]:
    """The message IDs of each entry of a stream, in order."""

    def message_ids(*key: str) -> list[list[str]]:
        return [[e["messageId"] for e in entry] for entry in stream_events(*key)]

    return message_ids


@pytest.fixture(scope="module")
def ingest_responses(
    template: dict[str, Any], function_packages: dict[str, Path], ingest_env: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Sample file name -> the handler's response, all invoked in one warm process."""
    names = sorted(p.name for p in INGEST_EVENTS.glob("*.json"))
    timeout_s = template["Resources"]["IngestFunction"]["Properties"]["Timeout"]
    invocations = [
        {"event": sample(INGEST_EVENTS / name), "budget_ms": timeout_s * 1000} for name in names
    ]
    report = invoke(
        function_packages["IngestFunction"],
        handler_of(template, "IngestFunction"),
        invocations,
        ingest_env,
    )
    return {name: r["response"] for name, r in zip(names, report["results"], strict=True)}


def json_body(response: dict[str, Any]) -> Any:
    body = response["body"]
    return json.loads(base64.b64decode(body) if response.get("isBase64Encoded") else body)


@pytest.mark.parametrize("name", ["rest-api-batch.json", "http-api-batch.json", "alb-batch.json"])
def test_ingest_accepts_a_batch_from_each_event_source(
    name: str, ingest_responses: dict[str, dict[str, Any]], stream: Callable[..., list]
) -> None:
    response = ingest_responses[name]
    sent = sent_message_ids(sample(INGEST_EVENTS / name))
    assert response["statusCode"] == 202, response
    assert json_body(response) == {"accepted": len(sent)}
    assert sent in stream()


def test_each_event_source_gets_its_own_response_shape(
    ingest_responses: dict[str, dict[str, Any]],
) -> None:
    rest, http, alb = (
        ingest_responses[n]
        for n in ("rest-api-batch.json", "http-api-batch.json", "alb-batch.json")
    )
    # REST sent multiValueHeaders, so it gets them back; HTTP API v2 takes lower-case headers;
    # an ALB target group without multi-value headers wants single-value ones.
    assert rest["multiValueHeaders"]["Content-Type"] == ["application/json"]
    assert http["headers"]["content-type"] == "application/json"
    assert alb["headers"]["Content-Type"] == "application/json"
    assert "multiValueHeaders" not in alb
    # JSON goes back as text: a REST API without binary media types would pass base64 through.
    assert not any(r["isBase64Encoded"] for r in (rest, http, alb))


def test_ingest_rejects_a_bad_request_and_adds_nothing(
    ingest_responses: dict[str, dict[str, Any]], stream: Callable[..., list]
) -> None:
    response = ingest_responses["rest-api-bad-request.json"]
    assert response["statusCode"] == 400, response
    problems = {(p["index"], p["field"]) for p in json_body(response)["problems"]}
    assert {(0, "event"), (1, "userId")} <= problems
    refused = set(sent_message_ids(sample(INGEST_EVENTS / "rest-api-bad-request.json")))
    assert not any(refused & set(entry) for entry in stream())


def test_a_gzip_body_reaches_the_app_through_lambda_as_it_does_served_directly(
    ingest_responses: dict[str, dict[str, Any]],
    ingest_env: dict[str, str],
    stream: Callable[..., list],
) -> None:
    """The base64 of a gzip body is undone byte for byte: the answer through Lambda is the one
    the same app gives to the same request served by WSGI directly (gunicorn's path)."""
    from functions.ingest.app import create_app

    event = sample(INGEST_EVENTS / "http-api-batch-gzip.json")
    assert event["isBase64Encoded"] and event["headers"]["content-encoding"] == "gzip"
    raw = base64.b64decode(event["body"])
    sent = [e["messageId"] for e in json.loads(gzip.decompress(raw))["batch"]]
    direct_key = f"{ingest_env['STREAM_KEY']}-direct"
    app = create_app(Settings.from_env({**ingest_env, "STREAM_KEY": direct_key}))
    direct = app.test_client().post(event["rawPath"], data=raw, headers=event["headers"])

    via_lambda = ingest_responses["http-api-batch-gzip.json"]
    assert (via_lambda["statusCode"], json_body(via_lambda)) == (direct.status_code, direct.json)
    assert direct.status_code == 202, direct.json
    assert stream(direct_key) == [sent]
    assert sent in stream()


def test_the_write_key_of_the_sample_events_is_recorded_as_their_source(
    ingest_responses: dict[str, dict[str, Any]],
    stream_events: Callable[..., list],
) -> None:
    sources = {event.get("source") for entry in stream_events() for event in entry}
    assert sources == {SAMPLE_WRITE_KEYS.partition(":")[0]}


# --- consumer ---------------------------------------------------------------------------------


class Producer:
    """Keeps appending entries while the consumer runs, so it stops because its time runs out,
    never because the stream ran dry. Remembers which events went into which entry."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client, self.key = client, key
        self.entries: dict[tuple[int, int], list[str]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def add(self, events_per_entry: int = 5) -> None:
        received_at = received_at_now()
        events = [
            {
                "type": "track",
                "event": "Sample",
                "userId": "u-1",
                "messageId": str(uuid.uuid4()),
                "receivedAt": received_at,
            }
            for _ in range(events_per_entry)
        ]
        entry_id = self.client.xadd(self.key, codec.encode_entry(events))
        self.entries[entry_key(entry_id)] = [e["messageId"] for e in events]

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.add()

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def test_consumer_returns_in_time_with_everything_it_read_archived_and_acknowledged(
    template: dict[str, Any],
    function_packages: dict[str, Path],
    settings: Settings,
    moto_endpoint: str,
    http_s3: Any,
    redis_client: redis.Redis,
) -> None:
    producer = Producer(redis_client, settings.stream_key)
    for _ in range(200):  # a backlog, then a steady trickle
        producer.add()
    env = settings_env(settings, S3_ENDPOINT_URL=moto_endpoint)
    scheduled = sample(CONSUMER_EVENTS / "scheduled.json")
    # Two invocations of one warm function, each with a budget that runs out mid-stream.
    invocations = [{"event": scheduled, "budget_ms": 2500}] * 2
    with producer:
        report = invoke(
            function_packages["ConsumerFunction"],
            handler_of(template, "ConsumerFunction"),
            invocations,
            env,
        )

    summaries = [r["response"] for r in report["results"]]
    # It returned on its own before its time was up (the invoker kills it at zero, as Lambda).
    assert all(r["remaining_ms"] > 0 for r in report["results"]), report["results"]
    assert all(s["store_failures"] == 0 and s["unflushed_entries"] == 0 for s in summaries)
    # Everything it read is acknowledged...
    assert redis_client.xpending(settings.stream_key, settings.consumer_group)["pending"] == 0
    # ...and archived exactly once: the events of every entry up to the last one it was given.
    group = redis_client.xinfo_groups(settings.stream_key)[0]
    last_read = entry_key(group["last-delivered-id"])
    read = [ids for entry, ids in sorted(producer.entries.items()) if entry <= last_read]
    assert len(read) == sum(s["entries_read"] for s in summaries) > 200
    archived = archived_events(http_s3, settings.s3_bucket, settings.s3_prefix)
    assert sorted(e["messageId"] for e in archived) == sorted(i for ids in read for i in ids)
    assert len(archived) == sum(s["events_archived"] for s in summaries)
    # Each invocation's counts and the stream's gauges went out as CloudWatch EMF lines.
    emf = [json.loads(line) for line in report["printed"] if line.startswith('{"_aws"')]
    archived_total = "event_ingest_consumer_events_archived_total"
    assert sum(d.get(archived_total, 0) for d in emf) == len(archived)
    freshness = [d for d in emf if "event_ingest_freshness_seconds" in d]
    assert len(freshness) == 2 and all(d["group"] == settings.consumer_group for d in freshness)
    [directive] = freshness[0]["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["group"]] and directive["Namespace"] == "EventIngest"


# --- privacy ----------------------------------------------------------------------------------

PRIVACY_EVENTS = ROOT / "functions" / "privacy" / "events"
SUBJECT = "alice-77e2@example.com"


def athena_answers(moto_endpoint: str, *answers: tuple[list[str], list[Row]]) -> None:
    """Athena's answers to the next queries, given to moto's server as its documentation says."""
    sent = urllib3.request(
        "POST",
        f"{moto_endpoint}/moto-api/static/athena/query-results",
        json={"region": "us-east-1", "results": [answer(*a) for a in answers]},
    )
    assert sent.status == 201


def test_privacy_deletes_what_athena_found_and_reports_through_emf(
    template: dict[str, Any],
    function_packages: dict[str, Path],
    settings: Settings,
    moto_endpoint: str,
    http_s3: Any,
    redis_client: redis.Redis,
) -> None:
    tag = uuid.uuid4().hex[:10]
    workgroup, results_bucket = f"events-{tag}", f"athena-results-{tag}"
    boto3.client("athena", endpoint_url=moto_endpoint, region_name="us-east-1").create_work_group(
        Name=workgroup
    )
    http_s3.create_bucket(Bucket=results_bucket)
    store = ObjectStore(http_s3, settings.s3_bucket)
    events = [ev("1", "10:11", "Login", SUBJECT), ev("2", "10:12", "Viewed", "bob")]
    [key] = write_ndjson(store, settings.s3_prefix, [(b"1709632800000-0", events)])
    regulation_store = RegulationStore(store, settings.s3_prefix)
    accepted = regulations.new_regulation(
        regulation_store.key(), "DELETE_ONLY", "USER_ID", [SUBJECT],
        now=datetime.now(UTC) - timedelta(hours=1),
    )  # fmt: skip
    regulation_store.save(accepted)
    regulation_store.publish(redis_client, settings.stream_key)
    athena_answers(
        moto_endpoint,
        (["linked_id"], []),
        (["object_key", "objects"], [(f"s3://{settings.s3_bucket}/{key}", "1"), (None, "3")]),
    )
    env = settings_env(
        settings,
        S3_ENDPOINT_URL=moto_endpoint,
        AWS_ENDPOINT_URL_ATHENA=moto_endpoint,  # boto3's own variable: the code names none
        ATHENA_WORKGROUP=workgroup,
        ATHENA_OUTPUT_LOCATION=f"s3://{results_bucket}/results/",
        **FAKE_CREDENTIALS,
    )
    scheduled = sample(PRIVACY_EVENTS / "scheduled.json")

    report = invoke(
        function_packages["PrivacyFunction"],
        handler_of(template, "PrivacyFunction"),
        [{"event": scheduled, "budget_ms": 60_000}],
        env,
    )

    [result] = report["results"]
    assert result["response"]["finished"] == [accepted.id], result["response"]
    assert result["response"]["tally"]["objects_scanned"] == 4
    stored = gzip.decompress(http_s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read())
    assert SUBJECT.encode() not in stored and b'"bob"' in stored
    emf = [json.loads(line) for line in report["printed"] if line.startswith('{"_aws"')]
    gauges = {name: d[name] for d in emf for name in d if name.startswith("event_ingest_privacy")}
    assert gauges == {
        "event_ingest_privacy_deletions_pending": 0,
        "event_ingest_privacy_deletions_failed": 0,
        "event_ingest_privacy_deletions_finished": 1,
        "event_ingest_privacy_oldest_deletion_seconds": 0,
    }
    assert http_s3.list_objects_v2(Bucket=results_bucket).get("KeyCount") == 0


def test_the_admin_function_accepts_a_regulation_from_its_sample_event(
    template: dict[str, Any],
    function_packages: dict[str, Path],
    settings: Settings,
    moto_endpoint: str,
    http_s3: Any,
) -> None:
    event = sample(ROOT / "functions" / "admin" / "events" / "http-api-create-regulation.json")
    token = event["headers"]["authorization"].removeprefix("Bearer ")
    env = settings_env(settings, S3_ENDPOINT_URL=moto_endpoint, ADMIN_TOKEN=token)

    report = invoke(
        function_packages["AdminFunction"],
        handler_of(template, "AdminFunction"),
        [{"event": event, "budget_ms": 25_000}],
        env,
    )

    [result] = report["results"]
    assert result["response"]["statusCode"] == 200, result["response"]
    regulation_id = json_body(result["response"])["data"]["regulateId"]
    stored = RegulationStore(ObjectStore(http_s3, settings.s3_bucket), settings.s3_prefix)
    regulation = stored.get(regulation_id)
    assert (regulation.type, len(regulation.subject_hashes)) == ("SUPPRESS_WITH_DELETE", 2)
