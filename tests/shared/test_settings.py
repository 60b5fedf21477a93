"""Settings: defaults, parsing of every variable, and rejection of bad values by name."""

from __future__ import annotations

import dataclasses

import pytest

from shared.settings import ENV_VARS, ConfigError, Settings

# A consistent base so that single-variable overrides do not trip the cross-field rule.
BASE = {"FLUSH_INTERVAL_S": "1", "CLAIM_IDLE_MS": "5000"}


def from_env(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.stream_key == "events"
    assert settings.consumer_group == "archiver"
    assert settings.consumer_name is None
    assert settings.s3_bucket == "events-archive"
    assert settings.s3_prefix == "events/"
    assert settings.s3_endpoint_url is None
    assert settings.flush_max_events == 50_000
    assert settings.flush_max_bytes == 32 * 1024 * 1024
    assert settings.flush_interval_s == 60.0
    assert settings.claim_idle_ms == 300_000
    assert settings.redis_timeout_s == 2.0
    assert settings.write_keys == ()
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.max_event_bytes == 64 * 1024
    assert settings.cors_allow_origin == "*"
    assert settings.stream_max_len == 100_000
    assert settings.stream_max_bytes == 512 * 1024 * 1024
    assert settings.read_max_bytes == 64 * 1024 * 1024
    assert settings.max_deliveries == 10
    assert settings.gzip_level == 3
    assert settings.redis_wait_replicas == 0
    assert settings.redis_wait_timeout_ms == 500


def test_from_env_reads_os_environ_when_no_mapping_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAM_KEY", "from-os-environ")
    assert Settings.from_env().stream_key == "from-os-environ"


CORE_VARS = {
    "REDIS_URL",
    "STREAM_KEY",
    "CONSUMER_GROUP",
    "CONSUMER_NAME",
    "S3_BUCKET",
    "S3_PREFIX",
    "S3_ENDPOINT_URL",
    "FLUSH_MAX_EVENTS",
    "FLUSH_MAX_BYTES",
    "FLUSH_INTERVAL_S",
    "CLAIM_IDLE_MS",
    "REDIS_TIMEOUT_S",
    "WRITE_KEYS",
    "MAX_BODY_BYTES",
    "MAX_EVENT_BYTES",
    "CORS_ALLOW_ORIGIN",
    "STREAM_MAX_LEN",
    "MAX_DELIVERIES",
    "GZIP_LEVEL",
    "REDIS_WAIT_REPLICAS",
    "REDIS_WAIT_TIMEOUT_MS",
    "METRICS_ENABLED",
    "DEAD_LETTER_MAX_LEN",
}


def test_env_vars_lists_every_field_once() -> None:
    assert len(ENV_VARS) == len(set(ENV_VARS)) == len(dataclasses.fields(Settings))
    assert set(ENV_VARS) >= CORE_VARS


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.stream_key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "raw", "attribute", "expected"),
    [
        ("REDIS_URL", "redis://cache:6380/2", "redis_url", "redis://cache:6380/2"),
        ("REDIS_URL", " rediss://h:6379/0 ", "redis_url", "rediss://h:6379/0"),
        ("REDIS_URL", "unix:///tmp/redis.sock", "redis_url", "unix:///tmp/redis.sock"),
        ("STREAM_KEY", "clicks", "stream_key", "clicks"),
        ("STREAM_KEY", "  padded  ", "stream_key", "padded"),
        ("CONSUMER_GROUP", "archiver-2", "consumer_group", "archiver-2"),
        ("CONSUMER_NAME", "worker-7", "consumer_name", "worker-7"),
        ("CONSUMER_NAME", "", "consumer_name", None),
        ("CONSUMER_NAME", "   ", "consumer_name", None),
        ("S3_BUCKET", "my-bucket", "s3_bucket", "my-bucket"),
        ("S3_ENDPOINT_URL", "http://127.0.0.1:9000", "s3_endpoint_url", "http://127.0.0.1:9000"),
        ("S3_ENDPOINT_URL", "https://s3.example.com", "s3_endpoint_url", "https://s3.example.com"),
        ("S3_ENDPOINT_URL", "", "s3_endpoint_url", None),
        ("S3_ENDPOINT_URL", "  ", "s3_endpoint_url", None),
        ("FLUSH_MAX_EVENTS", "10", "flush_max_events", 10),
        ("FLUSH_MAX_EVENTS", " 1_000 ", "flush_max_events", 1000),
        ("FLUSH_MAX_BYTES", "1048576", "flush_max_bytes", 1_048_576),
        ("FLUSH_MAX_BYTES", "64_000_000", "flush_max_bytes", 64_000_000),
        ("FLUSH_MAX_BYTES", str(2**30), "flush_max_bytes", 2**30),
        ("FLUSH_INTERVAL_S", "2.5", "flush_interval_s", 2.5),
        ("FLUSH_INTERVAL_S", "3", "flush_interval_s", 3.0),
        ("CLAIM_IDLE_MS", "120000", "claim_idle_ms", 120_000),
        ("REDIS_TIMEOUT_S", "0.25", "redis_timeout_s", 0.25),
        ("REDIS_TIMEOUT_S", "1e1", "redis_timeout_s", 10.0),
        ("REDIS_WAIT_REPLICAS", "0", "redis_wait_replicas", 0),
        ("REDIS_WAIT_REPLICAS", " 2 ", "redis_wait_replicas", 2),
        ("REDIS_WAIT_TIMEOUT_MS", "250", "redis_wait_timeout_ms", 250),
        ("METRICS_ENABLED", "false", "metrics_enabled", False),
        ("METRICS_ENABLED", " ON ", "metrics_enabled", True),
        ("DEAD_LETTER_MAX_LEN", "50", "dead_letter_max_len", 50),
    ],
)
def test_each_variable_is_parsed(env: str, raw: str, attribute: str, expected: object) -> None:
    settings = from_env(**{env: raw})
    value = getattr(settings, attribute)
    assert value == expected
    assert type(value) is type(expected)


def test_numbers_have_the_right_types() -> None:
    settings = from_env(FLUSH_MAX_EVENTS="7", FLUSH_INTERVAL_S="2", CLAIM_IDLE_MS="9000")
    assert isinstance(settings.flush_max_events, int)
    assert isinstance(settings.claim_idle_ms, int)
    assert isinstance(settings.flush_interval_s, float)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("events", "events/"),
        ("events/", "events/"),
        ("/events", "events/"),
        ("//events/", "events/"),
        ("a/b", "a/b/"),
        ("/a/b/", "a/b/"),
        ("  raw/data  ", "raw/data/"),
        ("", ""),
        ("/", ""),
        ("   ", ""),
    ],
)
def test_s3_prefix_is_normalised(raw: str, expected: str) -> None:
    assert from_env(S3_PREFIX=raw).s3_prefix == expected


BAD_VALUES = [
    ("REDIS_URL", ""),
    ("REDIS_URL", "   "),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "127.0.0.1:6379"),
    ("STREAM_KEY", ""),
    ("STREAM_KEY", "  "),
    ("CONSUMER_GROUP", ""),
    ("S3_BUCKET", ""),
    ("S3_BUCKET", " \t"),
    ("S3_ENDPOINT_URL", "127.0.0.1:9000"),
    ("S3_ENDPOINT_URL", "s3://bucket"),
    ("FLUSH_MAX_EVENTS", ""),
    ("FLUSH_MAX_EVENTS", "ten"),
    ("FLUSH_MAX_EVENTS", "1.5"),
    ("FLUSH_MAX_EVENTS", "0"),
    ("FLUSH_MAX_EVENTS", "-5"),
    ("FLUSH_MAX_BYTES", "1MB"),
    ("FLUSH_MAX_BYTES", "0"),
    ("FLUSH_MAX_BYTES", "-1"),
    ("FLUSH_MAX_BYTES", str(2**30 + 1)),
    ("FLUSH_INTERVAL_S", ""),
    ("FLUSH_INTERVAL_S", "soon"),
    ("FLUSH_INTERVAL_S", "0"),
    ("FLUSH_INTERVAL_S", "-1"),
    ("FLUSH_INTERVAL_S", "nan"),
    ("FLUSH_INTERVAL_S", "inf"),
    ("CLAIM_IDLE_MS", ""),
    ("CLAIM_IDLE_MS", "5s"),
    ("CLAIM_IDLE_MS", "0"),
    ("CLAIM_IDLE_MS", "-100"),
    ("REDIS_TIMEOUT_S", "x"),
    ("REDIS_TIMEOUT_S", "0"),
    ("REDIS_TIMEOUT_S", "-0.5"),
    ("REDIS_TIMEOUT_S", "NaN"),
    ("REDIS_TIMEOUT_S", "Infinity"),
    ("WRITE_KEYS", "nocolon"),
    ("WRITE_KEYS", "web:"),
    ("WRITE_KEYS", ":key"),
    ("WRITE_KEYS", "web:k1,ios:k1"),
    ("MAX_BODY_BYTES", "0"),
    ("MAX_BODY_BYTES", "500KB"),
    ("MAX_EVENT_BYTES", "-1"),
    ("CORS_ALLOW_ORIGIN", " "),
    ("STREAM_MAX_LEN", "0"),
    ("STREAM_MAX_LEN", "lots"),
    ("MAX_DELIVERIES", "0"),
    ("MAX_DELIVERIES", "1.5"),
    ("GZIP_LEVEL", "0"),
    ("GZIP_LEVEL", "10"),
    ("GZIP_LEVEL", "best"),
    ("REDIS_WAIT_REPLICAS", "-1"),
    ("REDIS_WAIT_REPLICAS", "one"),
    ("REDIS_WAIT_REPLICAS", ""),
    ("REDIS_WAIT_TIMEOUT_MS", "0"),
    ("REDIS_WAIT_TIMEOUT_MS", "0.5"),
    ("METRICS_ENABLED", "maybe"),
    ("DEAD_LETTER_MAX_LEN", "0"),
]


@pytest.mark.parametrize("raw", ["web:wk_secret_1,broken", "web:wk_secret_1,ios:wk_secret_1"])
def test_write_key_errors_never_quote_the_keys(raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        from_env(WRITE_KEYS=raw)
    assert "wk_secret" not in str(excinfo.value)


def test_write_keys_parse_into_source_key_pairs() -> None:
    settings = from_env(WRITE_KEYS=" web:k1 , ios:k2,")
    assert settings.write_keys == (("web", "k1"), ("ios", "k2"))
    assert "k1" not in repr(settings)


@pytest.mark.parametrize(("env", "raw"), BAD_VALUES)
def test_bad_value_raises_config_error_naming_the_variable(env: str, raw: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        from_env(**{env: raw})
    assert env in str(excinfo.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_every_variable_has_a_bad_value_case() -> None:
    covered = {env for env, _ in BAD_VALUES}
    # CONSUMER_NAME and S3_PREFIX accept anything (unset / bucket root).
    assert covered == CORE_VARS - {"CONSUMER_NAME", "S3_PREFIX"}


@pytest.mark.parametrize(
    ("claim_idle_ms", "flush_interval_s"),
    [("1000", "1"), ("999", "1"), ("60000", "60"), ("1", "0.5"), ("59999", "60")],
)
def test_claim_idle_not_above_flush_interval_is_rejected(
    claim_idle_ms: str, flush_interval_s: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        Settings.from_env({"CLAIM_IDLE_MS": claim_idle_ms, "FLUSH_INTERVAL_S": flush_interval_s})
    message = str(excinfo.value)
    assert "CLAIM_IDLE_MS" in message
    assert "FLUSH_INTERVAL_S" in message


@pytest.mark.parametrize(
    ("claim_idle_ms", "flush_interval_s"), [("1001", "1"), ("60001", "60"), ("501", "0.5")]
)
def test_claim_idle_above_flush_interval_is_accepted(
    claim_idle_ms: str, flush_interval_s: str
) -> None:
    settings = Settings.from_env(
        {"CLAIM_IDLE_MS": claim_idle_ms, "FLUSH_INTERVAL_S": flush_interval_s}
    )
    assert settings.claim_idle_ms == int(claim_idle_ms)
    assert settings.flush_interval_s == float(flush_interval_s)


def test_default_claim_idle_conflicts_with_a_long_flush_interval() -> None:
    # Only FLUSH_INTERVAL_S set: default CLAIM_IDLE_MS (300 s) is not above 400 s.
    with pytest.raises(ConfigError, match="CLAIM_IDLE_MS"):
        Settings.from_env({"FLUSH_INTERVAL_S": "400"})


def test_cross_field_rule_also_applies_to_direct_construction() -> None:
    with pytest.raises(ConfigError, match="CLAIM_IDLE_MS"):
        Settings(flush_interval_s=10.0, claim_idle_ms=10_000)


@pytest.mark.parametrize(("wait_timeout_ms", "redis_timeout_s"), [("2000", "2"), ("900", "0.5")])
def test_a_wait_timeout_not_below_the_socket_timeout_is_rejected(
    wait_timeout_ms: str, redis_timeout_s: str
) -> None:
    # Otherwise the socket would give up before WAIT answers, and a slow replica would look
    # like a dead Redis.
    with pytest.raises(ConfigError) as excinfo:
        from_env(
            REDIS_WAIT_REPLICAS="1",
            REDIS_WAIT_TIMEOUT_MS=wait_timeout_ms,
            REDIS_TIMEOUT_S=redis_timeout_s,
        )
    assert "REDIS_WAIT_TIMEOUT_MS" in str(excinfo.value) and "REDIS_TIMEOUT_S" in str(excinfo.value)


def test_the_wait_timeout_is_not_checked_when_nothing_waits() -> None:
    assert from_env(REDIS_TIMEOUT_S="0.25").redis_wait_timeout_ms == 500
