"""Secrets from Secrets Manager (moto's): read at start, read again as they age, a failed
refresh keeps the value in use, and no value ever shows in an error or a log line."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from functions.ingest.app import create_app
from shared import secrets, stream
from shared.secrets import CachedSecret, SecretError
from shared.settings import ConfigError, Settings
from tests.conftest import wait_until

TOKEN = "s3cr3t-token-value"


@pytest.fixture
def secretsmanager() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="us-east-1")


def new_secret(client: Any, value: str) -> str:
    name = f"event-ingest/test-{uuid.uuid4().hex[:8]}"  # the cache is per process: new names
    client.create_secret(Name=name, SecretString=value)
    return name


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- the cache ---------------------------------------------------------------------------------


def test_a_secret_is_read_once_then_again_when_it_ages() -> None:
    reads, clock = [], Clock()

    def fetch(secret_id: str) -> str:
        reads.append(secret_id)
        return f"value-{len(reads)}"

    secret = CachedSecret("keys", 300, fetch, clock)
    assert secret.value() == "value-1"
    clock.now = 299
    assert secret.value() == "value-1"
    clock.now = 300
    assert secret.value() == "value-2"
    assert reads == ["keys", "keys"]


def test_a_failed_refresh_keeps_the_value_and_logs_no_secret(caplog) -> None:
    clock, answers = Clock(), iter(["first-value"])

    def fetch(secret_id: str) -> str:
        try:
            return next(answers)
        except StopIteration:
            raise SecretError(f"secret {secret_id}: ThrottlingException") from None

    secret = CachedSecret("keys", 60, fetch, clock)
    secret.value()
    clock.now = 61
    with caplog.at_level(logging.WARNING):
        assert secret.value() == "first-value"
    assert "ThrottlingException" in caplog.text and "first-value" not in caplog.text
    clock.now = 62  # the next try waits a whole max age: no storm of calls
    assert secret.value() == "first-value"


def test_a_first_read_that_fails_raises() -> None:
    def fetch(secret_id: str) -> str:
        raise SecretError(f"secret {secret_id}: AccessDeniedException")

    with pytest.raises(SecretError, match="AccessDenied"):
        CachedSecret("keys", 60, fetch).value()


# --- Secrets Manager ---------------------------------------------------------------------------


def test_secrets_manager_answers_and_refusals(secretsmanager) -> None:
    name = new_secret(secretsmanager, TOKEN)
    assert secrets.fetch_from_secrets_manager(name) == TOKEN
    with pytest.raises(SecretError, match="ResourceNotFoundException") as refused:
        secrets.fetch_from_secrets_manager("event-ingest/absent")
    assert "event-ingest/absent" in str(refused.value)
    secretsmanager.create_secret(Name="binary", SecretBinary=b"\x00\x01")
    with pytest.raises(SecretError, match="binary"):
        secrets.fetch_from_secrets_manager("binary")


@pytest.mark.parametrize(
    ("value", "credentials"),
    [
        (TOKEN, (TOKEN,)),
        (json.dumps({"password": TOKEN}), (TOKEN,)),
        (json.dumps({"username": "ingest", "password": TOKEN}), ("ingest", TOKEN)),
    ],
)
def test_the_redis_secret_holds_a_token_or_json(value, credentials) -> None:
    assert secrets.redis_credentials(value) == credentials


@pytest.mark.parametrize("value", ["", "  ", json.dumps({"username": "u"}), '{"password": 1}'])
def test_a_redis_secret_without_a_password_is_refused_without_its_value(value) -> None:
    with pytest.raises(SecretError) as refused:
        secrets.redis_credentials(value)
    assert value.strip() == "" or value not in str(refused.value)


# --- settings ----------------------------------------------------------------------------------


def test_write_keys_come_from_their_secret(secretsmanager) -> None:
    name = new_secret(secretsmanager, "web:key-one,ios:key-two")
    settings = Settings.from_env({"WRITE_KEYS_SECRET": name})
    assert settings.write_keys == (("web", "key-one"), ("ios", "key-two"))
    assert "key-one" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WRITE_KEYS_SECRET": "event-ingest/absent"}, "ResourceNotFoundException"),
        ({"WRITE_KEYS_SECRET": "{malformed}", "WRITE_KEYS": "web:k"}, "not both"),
        (
            {"REDIS_AUTH_SECRET": "event-ingest/absent", "REDIS_URL": "redis://:pw@h:6379/0"},
            "keep one",
        ),
    ],
)
def test_a_secret_that_cannot_be_used_fails_the_start(secretsmanager, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_a_malformed_write_keys_secret_fails_the_start_without_its_value(secretsmanager) -> None:
    name = new_secret(secretsmanager, "web:key-one,no-colon-here")
    with pytest.raises(ConfigError, match="WRITE_KEYS_SECRET: pair 2") as refused:
        Settings.from_env({"WRITE_KEYS_SECRET": name})
    assert "key-one" not in str(refused.value) and "no-colon" not in str(refused.value)


def test_the_admin_token_comes_from_its_secret(secretsmanager) -> None:
    settings = Settings.from_env({"ADMIN_TOKEN_SECRET": new_secret(secretsmanager, f"{TOKEN}\n")})
    assert settings.admin_token == TOKEN
    assert TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ADMIN_TOKEN": TOKEN, "ADMIN_TOKEN_SECRET": "event-ingest/any"}, "not both"),
        ({"ADMIN_TOKEN_SECRET": "event-ingest/absent"}, "ResourceNotFoundException"),
        ({"ADMIN_TOKEN": TOKEN, "WRITE_KEYS": f"web:{TOKEN}"}, "must not be a write key"),
    ],
)
def test_an_admin_token_that_cannot_be_used_fails_the_start(secretsmanager, env, message) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(env)
    assert TOKEN not in str(refused.value)


def test_an_empty_admin_token_secret_fails_the_start(secretsmanager) -> None:
    with pytest.raises(ConfigError, match="ADMIN_TOKEN_SECRET holds an empty token"):
        Settings.from_env({"ADMIN_TOKEN_SECRET": new_secret(secretsmanager, "  \n")})


def test_a_plain_redis_url_is_refused_where_tls_is_required() -> None:
    with pytest.raises(ConfigError, match="rediss://") as refused:
        Settings.from_env({"REDIS_REQUIRE_TLS": "true", "REDIS_URL": "redis://:pw@cache:6379/0"})
    assert "pw" not in str(refused.value) and "cache" not in str(refused.value)
    accepted = Settings.from_env({"REDIS_REQUIRE_TLS": "true", "REDIS_URL": "rediss://cache:6379"})
    assert accepted.redis_url == "rediss://cache:6379"
    assert not Settings.from_env({}).redis_require_tls  # locally and in containers: off


# --- Redis AUTH and write keys rotated while running --------------------------------------------


@pytest.fixture
def password_protected(redis_server) -> Iterator[redis.Redis]:
    admin = redis.Redis.from_url(redis_server.url)
    admin.config_set("requirepass", TOKEN)
    admin = redis.Redis(port=redis_server.port, password=TOKEN)
    try:
        yield admin
    finally:
        admin.config_set("requirepass", "")


def test_redis_authenticates_with_the_secret_and_follows_its_rotation(
    secretsmanager, redis_server, password_protected
) -> None:
    name = new_secret(secretsmanager, TOKEN)
    env = {"REDIS_URL": redis_server.url, "REDIS_AUTH_SECRET": name, "SECRETS_REFRESH_S": "0.2"}
    client = stream.connect(Settings.from_env(env))
    assert client.ping()
    # Rotation: Redis takes the new token, the secret gets it; the old one stops working.
    password_protected.config_set("requirepass", "rotated-token")
    password_protected = redis.Redis(port=redis_server.port, password="rotated-token")
    secretsmanager.put_secret_value(SecretId=name, SecretString="rotated-token")
    client.connection_pool.disconnect()  # connections open before stay authenticated; new:

    def new_connection_authenticates() -> bool:
        try:
            return client.ping()
        except redis.AuthenticationError:
            client.connection_pool.disconnect()
            return False

    assert wait_until(new_connection_authenticates, timeout_s=5, what="the rotated token")
    password_protected.config_set("requirepass", TOKEN)


def post(client, key: str) -> int:
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
    return client.post("/batch", json=body, auth=(key, "")).status_code


def test_ingest_follows_a_rotated_write_key(secretsmanager, settings, caplog) -> None:
    name = new_secret(secretsmanager, "web:old-key")
    rotating = dataclasses.replace(
        settings, write_keys=(), write_keys_secret=name, secrets_refresh_s=0.2
    )
    client = create_app(rotating).test_client()
    assert post(client, "old-key") == 202
    secretsmanager.put_secret_value(SecretId=name, SecretString="web:new-key")
    wait_until(lambda: post(client, "new-key") == 202, timeout_s=5, what="the new key")
    assert post(client, "old-key") == 401
    # A malformed new value is refused; the keys in use stay.
    secretsmanager.put_secret_value(SecretId=name, SecretString="web:leaked-value,broken")
    with caplog.at_level(logging.WARNING):
        wait_until(
            lambda: post(client, "new-key") == 202 and "keeping the value in use" in caplog.text,
            timeout_s=5,
            what="the malformed value refused",
        )
    assert "leaked-value" not in caplog.text


def test_an_empty_write_keys_secret_never_opens_the_endpoint(secretsmanager, settings, caplog):
    name = new_secret(secretsmanager, " , ")
    with pytest.raises(ConfigError, match="anonymous"):
        Settings.from_env({"WRITE_KEYS_SECRET": name})
    # Emptied after start: refused, and the keys in use stay.
    name = new_secret(secretsmanager, "web:the-key")
    rotating = dataclasses.replace(
        settings, write_keys=(), write_keys_secret=name, secrets_refresh_s=0.2
    )
    client = create_app(rotating).test_client()
    secretsmanager.put_secret_value(SecretId=name, SecretString=" , ")
    with caplog.at_level(logging.WARNING):
        wait_until(
            lambda: post(client, "the-key") == 202 and "holds no" in caplog.text, timeout_s=5
        )
    body = {"batch": [{"type": "track", "userId": "u", "event": "E"}]}
    assert client.post("/batch", json=body).status_code == 401  # still no anonymous request


def test_a_refresh_in_progress_keeps_others_on_the_current_value() -> None:
    import threading

    clock, started, release = Clock(), threading.Event(), threading.Event()
    answers = iter(["first", "second"])

    def fetch(secret_id: str) -> str:
        value = next(answers)
        if value == "second":
            started.set()
            release.wait(5)  # Secrets Manager is slow to answer
        return value

    secret = CachedSecret("keys", 60, fetch, clock)
    assert secret.value() == "first"
    clock.now = 61
    refresher = threading.Thread(target=secret.value)
    refresher.start()
    assert started.wait(5)
    assert secret.value() == "first"  # at once, not after the slow refresh
    release.set()
    refresher.join(5)
    assert secret.value() == "second"


def test_a_redis_secret_rotated_to_garbage_keeps_the_token_in_use(caplog) -> None:
    clock, answers = Clock(), iter([TOKEN, json.dumps({"username": "no password"})])
    secret = CachedSecret("redis", 60, lambda _id: next(answers), clock, secrets.redis_credentials)
    credentials = secrets.RedisCredentials(secret)
    assert credentials.get_credentials() == (TOKEN,)  # at start
    clock.now = 61
    with caplog.at_level(logging.WARNING):
        assert credentials.get_credentials() == (TOKEN,)
    assert "keeping the value in use" in caplog.text and "no password" not in caplog.text
