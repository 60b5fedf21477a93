"""The privacy API through Flask's test client, served by the ingest app (ADMIN_TOKEN set) and
by the admin function's app alike, against in-process moto and a real redis-server."""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

import pytest
import redis
import urllib3
from flask import Flask
from flask.testing import FlaskClient

from functions.admin.app import create_admin_app
from functions.ingest.app import create_app
from local.lambda_build import ROOT
from shared import regulations
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.conftest import archived_keys, free_port, gunicorn_serving, settings_env
from tests.fresh_process import in_a_fresh_process
from tests.functions.admin.imports import modules_loaded_by

TOKEN = "admin-token-4f1c9a0e7b"
AUTHORIZED = {"Authorization": f"Bearer {TOKEN}"}
ALICE, BOB = "alice-7c1e5d@example.com", "bob-93fa02@example.com"
SEGMENT_BODY = {"regulationType": "SUPPRESS_WITH_DELETE", "subjectType": "USER_ID"}
SAMPLES = ROOT / "functions" / "admin" / "events"
APPS = {"ingest": create_app, "admin": create_admin_app}


@pytest.fixture(params=sorted(APPS))
def make_app(request: pytest.FixtureRequest, s3: Any) -> Any:
    """Builds the ingest app or the admin app (each test runs against both)."""
    return APPS[request.param]


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, admin_token=TOKEN)


@pytest.fixture
def client(make_app: Any, admin_settings: Settings) -> FlaskClient:
    return make_app(admin_settings).test_client()


@pytest.fixture
def store(s3: Any, settings: Settings) -> RegulationStore:
    return RegulationStore(ObjectStore(s3, settings.s3_bucket), settings.s3_prefix)


def create(client: FlaskClient, body: Any, headers: dict[str, str] | None = None) -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body)
    headers = AUTHORIZED if headers is None else headers
    return client.post("/regulations", data=data, headers=headers)


def both_routes(client: FlaskClient, headers: dict[str, str] = AUTHORIZED) -> list[Any]:
    """A creation and a reading, as `headers` authorize them."""
    return [
        create(client, {**SEGMENT_BODY, "subjectIds": [ALICE]}, headers),
        client.get("/regulations/20240101T000000-00000000", headers=headers),
    ]


def nothing_written(s3: Any, settings: Settings, redis_client: redis.Redis) -> bool:
    key = regulations.view_key(settings.stream_key)
    return archived_keys(s3, settings.s3_bucket) == [] and not redis_client.exists(key)


# --- creating -------------------------------------------------------------------------------


def test_segment_s_body_is_accepted_and_in_force_at_once(
    client: FlaskClient, settings: Settings, store: RegulationStore, redis_client: redis.Redis
) -> None:
    # As a DSR tool sends it to Segment: with a JSON content type, or none at all.
    answer = client.post(
        "/regulations", json={**SEGMENT_BODY, "subjectIds": [ALICE, BOB]}, headers=AUTHORIZED
    )
    assert answer.status_code == 200, answer.json
    regulation = store.get(answer.json["data"]["regulateId"])
    assert answer.json == {"data": {"regulateId": regulation.id}}
    assert (regulation.type, regulation.subject_type) == ("SUPPRESS_WITH_DELETE", "USER_ID")
    assert regulation.subject_ids == [ALICE, BOB]
    view = regulations.parse_view(redis_client.hgetall(regulations.view_key(settings.stream_key)))
    assert view.suppresses({"userId": ALICE}) and view.drops({"userId": BOB})
    unlabelled = create(client, {**SEGMENT_BODY, "subjectIds": ["u3"]})
    assert unlabelled.status_code == 200 and len(store.all()) == 2


def test_anonymous_ids_are_our_extension(client: FlaskClient, store: RegulationStore) -> None:
    body = {"regulationType": "DELETE_ONLY", "subjectType": "ANONYMOUS_ID", "subjectIds": [ALICE]}
    regulation = store.get(create(client, body).json["data"]["regulateId"])
    assert regulation.subject_type == "ANONYMOUS_ID" and regulation.field_name == "anonymousId"


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({**SEGMENT_BODY, "regulationType": "FORGET", "subjectIds": ["u1"]}, "invalid_regulation",
         "regulationType must be one of DELETE_ONLY"),
        ({**SEGMENT_BODY, "subjectType": "EMAIL", "subjectIds": ["u1"]}, "invalid_regulation",
         "subjectType must be one of"),
        ({**SEGMENT_BODY, "subjectIds": []}, "invalid_regulation", "one or more IDs"),
        (SEGMENT_BODY, "invalid_regulation", "one or more IDs"),
        ({**SEGMENT_BODY, "subjectIds": ["u1", 7]}, "invalid_regulation",
         "subjectIds[1] is not a non-empty string"),
        ({**SEGMENT_BODY, "subjectIds": [f"u{n}" for n in range(5001)]}, "invalid_regulation",
         "at most 5000 subjectIds"),
        ([SEGMENT_BODY], "invalid_regulation", "a JSON object"),
        (b'{"regulationType": "DELETE_ONLY",', "invalid_json", "not valid JSON"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
    ],
)  # fmt: skip
def test_a_bad_body_is_400_and_writes_nothing(
    client: FlaskClient,
    s3: Any,
    settings: Settings,
    redis_client: redis.Redis,
    body: Any,
    code: str,
    fragment: str,
) -> None:
    answer = create(client, body)
    assert answer.status_code == 400
    assert answer.json["code"] == code and fragment in answer.json["message"]
    assert nothing_written(s3, settings, redis_client)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
)
def test_a_missing_or_wrong_token_is_401_and_writes_nothing(
    client: FlaskClient,
    s3: Any,
    settings: Settings,
    redis_client: redis.Redis,
    headers: dict[str, str],
) -> None:
    for answer in both_routes(client, headers):
        assert answer.status_code == 401
        assert answer.json["code"] == "unauthorized" and "ADMIN_TOKEN" in answer.json["message"]
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert TOKEN not in answer.get_data(as_text=True)
    assert nothing_written(s3, settings, redis_client)


def test_a_write_key_never_opens_the_api(make_app: Any, admin_settings: Settings) -> None:
    keyed = dataclasses.replace(admin_settings, write_keys=(("web", "wk-public"),))
    client = make_app(keyed).test_client()
    for authorization in ("Bearer wk-public", "Basic d2stcHVibGljOg=="):  # wk-public:
        answer = create(
            client, {**SEGMENT_BODY, "subjectIds": [ALICE]}, {"Authorization": authorization}
        )
        assert answer.status_code == 401


# --- reading --------------------------------------------------------------------------------


def test_the_state_is_reported_without_the_ids(client: FlaskClient, store: RegulationStore) -> None:
    regulate_id = create(client, {**SEGMENT_BODY, "subjectIds": [ALICE, BOB]}).json["data"][
        "regulateId"
    ]
    pending = client.get(f"/regulations/{regulate_id}", headers=AUTHORIZED)
    assert pending.status_code == 200
    regulation = store.get(regulate_id)
    assert pending.json == {
        "data": {
            "regulation": {
                "id": regulate_id,
                "overallStatus": "INITIALIZED",
                "createdAt": regulation.accepted_at,
                "finishedAt": None,
                "regulationType": "SUPPRESS_WITH_DELETE",
                "subjectType": "USER_ID",
                "subjectCount": 2,
                "linked": True,
                "progress": {},
                "undecodableObjects": 0,
                "error": None,
            }
        }
    }
    # As the deletion leaves it once done: its subjects forgotten, its counts kept.
    regulation.state, regulation.finished_at = regulations.FINISHED, "2030-01-01T00:00:00.000+00:00"
    regulation.progress = {"events_deleted": 7, "objects_rewritten": 2}
    regulation.forget_ids()
    store.save(regulation)
    finished = client.get(f"/regulations/{regulate_id}", headers=AUTHORIZED).json["data"]
    assert finished["regulation"]["overallStatus"] == "FINISHED"
    assert finished["regulation"]["finishedAt"] == regulation.finished_at
    assert finished["regulation"]["progress"] == {"eventsDeleted": 7, "objectsRewritten": 2}
    for shown in (pending.json, finished):
        assert ALICE not in json.dumps(shown) and BOB not in json.dumps(shown)


@pytest.mark.parametrize("regulation_id", ["20240101T000000-00000000", "..key.json", "x" * 100])
def test_an_unknown_regulation_is_404(
    client: FlaskClient, store: RegulationStore, regulation_id: str
) -> None:
    store.key()  # a bucket with regulations' key in it: not found all the same
    answer = client.get(f"/regulations/{regulation_id}", headers=AUTHORIZED)
    assert answer.status_code == 404
    assert answer.json["code"] == "not_found" and "no regulation" in answer.json["message"]


# --- without a token, or without its backends -----------------------------------------------


def test_without_an_admin_token_the_routes_do_not_exist(make_app: Any, settings: Settings) -> None:
    client = make_app(settings).test_client()
    for answer in both_routes(client):
        assert answer.status_code == 404 and answer.json["code"] == "not_found"


def test_the_ingest_app_still_ingests_beside_the_api(
    admin_settings: Settings, redis_client: redis.Redis, s3: Any
) -> None:
    client = create_app(admin_settings).test_client()
    answer = client.post("/v1/track", json={"userId": "u1", "event": "Signed Up"})
    assert answer.status_code == 200 and redis_client.xlen(admin_settings.stream_key) == 1


def test_redis_away_is_503_and_writes_nothing(
    make_app: Any, admin_settings: Settings, s3: Any, redis_client: redis.Redis
) -> None:
    away = dataclasses.replace(admin_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    answer = create(make_app(away).test_client(), {**SEGMENT_BODY, "subjectIds": [ALICE]})
    assert answer.status_code == 503 and answer.json["code"] == "unavailable"
    assert nothing_written(s3, admin_settings, redis_client)


def test_the_bucket_away_is_503(make_app: Any, admin_settings: Settings) -> None:
    missing = dataclasses.replace(admin_settings, s3_bucket="no-such-bucket-here")
    client = make_app(missing).test_client()
    for answer in both_routes(client):
        assert answer.status_code == 503 and answer.json["code"] == "unavailable"


def test_a_server_given_admin_token_serves_the_api(
    settings: Settings, http_s3: Any, moto_endpoint: str
) -> None:
    """As `make run` and the container image serve it: gunicorn, the environment, moto's
    server for the bucket."""
    env = {"ADMIN_TOKEN": TOKEN, "S3_ENDPOINT_URL": moto_endpoint, "WEB_CONCURRENCY": "1"}
    with gunicorn_serving(settings, **env) as url:
        body = json.dumps({**SEGMENT_BODY, "subjectIds": [ALICE]})
        created = urllib3.request("POST", f"{url}/regulations", body=body, headers=AUTHORIZED)
        assert created.status == 200, created.data
        regulate_id = created.json()["data"]["regulateId"]
        shown = urllib3.request("GET", f"{url}/regulations/{regulate_id}", headers=AUTHORIZED)
        refused = urllib3.request("GET", f"{url}/regulations/{regulate_id}")
    assert shown.json()["data"]["regulation"]["overallStatus"] == "INITIALIZED"
    assert refused.status == 401
    store = RegulationStore(ObjectStore(http_s3, settings.s3_bucket), settings.s3_prefix)
    assert store.get(regulate_id).subject_ids == [ALICE]


# --- the admin function ---------------------------------------------------------------------


def test_the_lambda_handler_answers_a_sample_event(
    monkeypatch: pytest.MonkeyPatch,
    s3: Any,
    settings: Settings,
    store: RegulationStore,
) -> None:
    event = json.loads((SAMPLES / "http-api-create-regulation.json").read_text())
    module = importlib.import_module("functions.admin.app")
    with monkeypatch.context() as patched:
        env = settings_env(settings, ADMIN_TOKEN="sample-admin-token")
        for name, value in env.items():
            patched.setenv(name, value)
        answer = importlib.reload(module).lambda_handler(event, None)
    importlib.reload(module)  # back to the app of the environment without a token
    assert answer["statusCode"] == 200, answer
    regulation = store.get(json.loads(answer["body"])["data"]["regulateId"])
    assert regulation.type == "SUPPRESS_WITH_DELETE" and regulation.subject_ids == [
        "u-2002",
        "u-2003",
    ]


def test_the_admin_function_carries_no_ingest_code() -> None:
    """Its Lambda bundle holds functions/admin and shared only."""
    loaded = in_a_fresh_process(modules_loaded_by, "functions.admin.app")
    assert "functions.admin.routes" in loaded  # the probe sees what the app imports
    assert [name for name in loaded if name.startswith("functions.ingest")] == []


def test_an_app_without_the_token_says_so(caplog: pytest.LogCaptureFixture, settings) -> None:
    with caplog.at_level("WARNING"):
        app: Flask = create_admin_app(settings)
    assert "privacy API is not served" in caplog.text
    assert not [rule for rule in app.url_map.iter_rules() if "regulations" in rule.rule]
