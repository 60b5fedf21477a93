"""The privacy function's handler, invoked as Lambda invokes it: the sample schedule event in
functions/privacy/events/, settings from the environment, the deletion pass finding objects
through moto's Athena (its answers given by the test, as Athena would give them), moto's
in-process S3 and a real redis-server."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.exceptions import ClientError
from moto.athena.models import athena_backends
from moto.core import DEFAULT_ACCOUNT_ID

from functions.privacy import app
from shared import metrics, regulations
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.settings import ConfigError, Settings
from tests.archives import ev, write_ndjson
from tests.athena_answers import queue
from tests.conftest import settings_env

SCHEDULED = Path(app.__file__).parent / "events" / "scheduled.json"
WORKGROUP, RESULTS = "events-wg", "athena-results"
ALICE = "alice-0c3e@example.com"
GAUGES = {
    "event_ingest_privacy_deletions_pending",
    "event_ingest_privacy_deletions_failed",
    "event_ingest_privacy_deletions_finished",
    "event_ingest_privacy_oldest_deletion_seconds",
}


class Context:
    def get_remaining_time_in_millis(self) -> int:
        return 900_000


class Emf:
    """The EMF lines the handler prints, as Lambda would have them."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def gauges(self) -> dict[str, float]:
        """The privacy gauges printed since the last call."""
        found = {}
        for document in map(json.loads, self.lines):
            found.update({name: document[name] for name in GAUGES & document.keys()})
        self.lines.clear()
        return found


@pytest.fixture
def emf(monkeypatch: pytest.MonkeyPatch) -> Emf:
    printed = Emf()
    monkeypatch.setattr(app, "_emf", metrics.EmfEmitter(printed.lines.append, enabled=True))
    return printed


@pytest.fixture
def athena(s3: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The environment Lambda gives the function (the template's variables), moto's Athena
    with the stack's workgroup, and the backend's queue of answers."""
    env = settings_env(
        settings,
        SUPPRESSION_RELOAD_S="0.05",
        ATHENA_WORKGROUP=WORKGROUP,
        ATHENA_OUTPUT_LOCATION=f"s3://{RESULTS}/results/",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app.backends.cache_clear()
    s3.create_bucket(Bucket=RESULTS)
    boto3.client("athena", region_name="us-east-1").create_work_group(Name=WORKGROUP)
    yield athena_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    app.backends.cache_clear()


def a_deletion(store: ObjectStore, settings: Settings, client: redis.Redis, **state: Any) -> str:
    """ALICE's deletion, accepted an hour ago (long settled), in force in Redis."""
    regulation_store = RegulationStore(store, settings.s3_prefix)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    regulation = regulations.new_regulation(
        regulation_store.key(), "DELETE_ONLY", "USER_ID", [ALICE], now=an_hour_ago
    )
    for name, value in state.items():
        setattr(regulation, name, value)
    regulation_store.save(regulation)
    regulation_store.publish(client, settings.stream_key)
    return regulation.id


def stored_text(s3: Any, settings: Settings, key: str) -> str:
    body = s3.get_object(Bucket=settings.s3_bucket, Key=key)["Body"].read()
    return gzip.decompress(body).decode()


def test_a_pass_deletes_what_athena_found_and_reports(
    s3: Any, settings: Settings, redis_client: redis.Redis, athena: Any, emf: Emf
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    at = "2024-03-05T10:1{}:00.000Z"
    events = [ev("1", at.format(1), "Login", ALICE), ev("2", at.format(2), "Viewed", "bob")]
    [key] = write_ndjson(store, settings.s3_prefix, [(b"1709632800000-0", events)])
    regulation_id = a_deletion(store, settings, redis_client)
    queue(
        athena,
        (["linked_id"], []),  # no anonymous ID beside Alice's events
        (["object_key", "objects"], [(f"s3://{settings.s3_bucket}/{key}", "1"), (None, "0")]),
    )

    summary = app.handler(json.loads(SCHEDULED.read_text()), Context())

    assert summary["finished"] == [regulation_id], summary
    assert json.loads(json.dumps(summary)) == summary  # what Lambda returns
    assert ALICE not in stored_text(s3, settings, key) and "bob" in stored_text(s3, settings, key)
    assert emf.gauges() == {
        "event_ingest_privacy_deletions_pending": 0,
        "event_ingest_privacy_deletions_failed": 0,
        "event_ingest_privacy_deletions_finished": 1,
        "event_ingest_privacy_oldest_deletion_seconds": 0.0,
    }
    # Athena searched by hash only, and its results are gone.
    executions = athena.executions.values()
    assert len(executions) == 2 and not any(ALICE in e.query for e in executions)
    assert s3.list_objects_v2(Bucket=RESULTS).get("KeyCount") == 0


def test_a_failed_pass_is_an_error_reported_first_and_retried_by_the_next(
    s3: Any, settings: Settings, redis_client: redis.Redis, athena: Any, emf: Emf
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    regulation_id = a_deletion(store, settings, redis_client)
    athena.work_groups.clear()  # Athena refuses every query: the workgroup is gone

    with pytest.raises(ClientError, match="WorkGroup does not exist"):
        app.handler(json.loads(SCHEDULED.read_text()), Context())
    gauges = emf.gauges()
    assert gauges["event_ingest_privacy_deletions_failed"] == 1
    assert gauges["event_ingest_privacy_deletions_pending"] == 0
    assert 3600 <= gauges["event_ingest_privacy_oldest_deletion_seconds"] < 3700
    failed = RegulationStore(store, settings.s3_prefix).get(regulation_id)
    assert failed.state == regulations.FAILED and "WorkGroup" in failed.error

    boto3.client("athena", region_name="us-east-1").create_work_group(Name=WORKGROUP)
    queue(athena, (["linked_id"], []), (["object_key", "objects"], [(None, "0")]))
    summary = app.handler(json.loads(SCHEDULED.read_text()), Context())
    assert summary["finished"] == [regulation_id]
    assert emf.gauges()["event_ingest_privacy_deletions_failed"] == 0


def test_a_deletion_left_failed_is_an_error_even_when_the_pass_is_not_due(
    s3: Any,
    settings: Settings,
    redis_client: redis.Redis,
    athena: Any,
    emf: Emf,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever left it failed (a pass elsewhere, say the command line's), the function's
    Errors alarm sees it while it stays so."""
    monkeypatch.setenv("SUPPRESSION_RELOAD_S", "600")  # accepted now: not due for 20 minutes
    store = ObjectStore(s3, settings.s3_bucket)
    regulation_id = a_deletion(
        store,
        settings,
        redis_client,
        state=regulations.FAILED,
        error="Athena query q-1 failed: HIVE_CURSOR_ERROR",
        accepted_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
    )

    with pytest.raises(app.DeletionFailed, match=f"{regulation_id}: Athena query q-1 failed"):
        app.handler(json.loads(SCHEDULED.read_text()), Context())
    assert emf.gauges()["event_ingest_privacy_deletions_failed"] == 1
    assert athena.executions == {}  # nothing was due: Athena was not asked


def test_nothing_pending_asks_athena_nothing_and_reports_zeros(
    s3: Any, settings: Settings, athena: Any, emf: Emf
) -> None:
    summary = app.handler(json.loads(SCHEDULED.read_text()), Context())
    assert summary["regulations"] == [] and summary["finished"] == []
    assert athena.executions == {}
    assert emf.gauges() == dict.fromkeys(GAUGES, 0)


def test_without_a_workgroup_the_function_fails_before_touching_anything(
    s3: Any,
    settings: Settings,
    redis_client: redis.Redis,
    athena: Any,
    emf: Emf,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = ObjectStore(s3, settings.s3_bucket)
    regulation_id = a_deletion(store, settings, redis_client)
    monkeypatch.delenv("ATHENA_WORKGROUP")

    with pytest.raises(ConfigError, match="ATHENA_WORKGROUP"):
        app.handler(json.loads(SCHEDULED.read_text()), Context())
    regulation = RegulationStore(store, settings.s3_prefix).get(regulation_id)
    assert regulation.state == regulations.PENDING and emf.gauges() == {}
