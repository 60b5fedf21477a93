"""Configuration from environment variables: the same names in Lambda, containers and locally.

Every value is parsed and checked once, at start; a bad value raises `ConfigError` naming the
variable, so a misconfigured deployment fails before it accepts or reads anything.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlparse

from shared import secrets

ARCHIVE_FORMATS = ("ndjson", "parquet")
# What `context.ip` keeps of a client's address (shared/enrichment/addresses.py).
IP_HANDLINGS = ("anonymize", "full", "none")


class ConfigError(ValueError):
    """A configuration variable is missing or malformed; the message names it."""


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name} must not be empty")
    return raw.strip()


def _optional_text(name: str, raw: str) -> str | None:
    return raw.strip() or None


def _redis_url(name: str, raw: str) -> str:
    url = _text(name, raw)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must start with redis://, rediss:// or unix://")
    return url


def _endpoint_url(name: str, raw: str) -> str | None:
    url = _optional_text(name, raw)
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL (or unset for AWS)")
    return url


def _prefix(name: str, raw: str) -> str:
    prefix = raw.strip().lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return prefix


def _s3_url(name: str, raw: str) -> str | None:
    url = _optional_text(name, raw)
    if url is not None and not url.startswith("s3://"):
        raise ConfigError(f"{name} must be an s3:// URL (or unset)")
    return url


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {value}")
    return value


def _count(name: str, raw: str) -> int:
    """A whole number, 0 or more."""
    return 0 if raw.strip() == "0" else _positive_int(name, raw)


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _gzip_level(name: str, raw: str) -> int:
    level = _positive_int(name, raw)
    if level > 9:
        raise ConfigError(f"{name} must be from 1 to 9, got {level}")
    return level


# A flush is held in memory whole (its staged events, then its object), and a Parquet flush's
# text columns are 32-bit-offset strings, which cannot pass 2 GiB: 1 GiB counted (either
# format's staged text, or NDJSON size) keeps every column below that, with room for the entry
# that crosses the hint.
MAX_FLUSH_BYTES = 1024 * 1024 * 1024


def _flush_bytes(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > MAX_FLUSH_BYTES:
        raise ConfigError(f"{name} must be at most {MAX_FLUSH_BYTES} (1 GiB), got {value}")
    return value


def _archive_format(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in ARCHIVE_FORMATS:
        raise ConfigError(f"{name} must be one of {', '.join(ARCHIVE_FORMATS)}, got {raw!r}")
    return value


def _ip_handling(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in IP_HANDLINGS:
        raise ConfigError(f"{name} must be one of {', '.join(IP_HANDLINGS)}, got {raw!r}")
    return value


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a finite number greater than 0, got {raw!r}")
    return value


def _write_keys(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    """`source:key,source:key` pairs. Errors never quote the value: it holds secrets."""
    pairs = []
    for position, item in enumerate(filter(None, (part.strip() for part in raw.split(","))), 1):
        source, _, key = item.partition(":")
        if not source.strip() or not key.strip():
            raise ConfigError(f"{name}: pair {position} is not of the form source:key")
        pairs.append((source.strip(), key.strip()))
    keys = [key for _, key in pairs]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"{name}: the same key is given to two sources")
    return tuple(pairs)


def write_keys_from_secret(raw: str) -> tuple[tuple[str, str], ...]:
    """WRITE_KEYS_SECRET's value: WRITE_KEYS's form, but never empty. Unset WRITE_KEYS means
    anonymous on purpose; a secret emptied by mistake must not open the endpoint."""
    pairs = _write_keys("WRITE_KEYS_SECRET", raw)
    if not pairs:
        raise ConfigError(
            "WRITE_KEYS_SECRET holds no source:key pair: none would accept anonymous requests"
        )
    return pairs


def _networks(name: str, raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated networks (`10.0.0.0/8,::1/128`); a bare address is its own /32 or /128."""
    networks = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name}: {item!r} is not a network or an address") from None
    return tuple(networks)


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated origins as browsers send them (`https://app.example.com`), or `*`."""
    origins = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        parts = urlparse(item)
        if item != "*" and (
            parts.scheme not in ("http", "https") or not parts.netloc or parts.path
        ):
            raise ConfigError(f"{name}: {item!r} is not an origin (scheme://host[:port])")
        origins.append(item.lower())
    return tuple(origins)


def _public_url(name: str, raw: str) -> str | None:
    """The scheme and host browsers reach the API at, without a trailing slash."""
    url = _optional_text(name, raw)
    if url is None:
        return None
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{name} must be an http:// or https:// URL such as https://api.example.com"
        )
    return url.rstrip("/")


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `events_per_s` refill (0: no limit) up to `burst` events (0 in a
    RATE_LIMIT_SOURCES entry: the default's seconds of burst)."""

    events_per_s: int
    burst: int


def _source_rate_limits(name: str, raw: str) -> tuple[tuple[str, RateLimit], ...]:
    """`source=events_per_s[/burst]` pairs, comma-separated; 0 lifts the source's limits."""
    limits: dict[str, RateLimit] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        source, _, spec = item.partition("=")
        rate, _, burst = spec.partition("/")
        if not source.strip() or not rate.strip():
            raise ConfigError(f"{name}: {item!r} is not of the form source=events_per_s[/burst]")
        if source.strip() in limits:
            raise ConfigError(f"{name}: {source.strip()!r} is given twice")
        events_per_s = _count(name, rate)
        burst_events = _positive_int(name, burst) if burst else 0
        limits[source.strip()] = RateLimit(events_per_s, burst_events)
    return tuple(limits.items())


def _var(env: str, default: Any, parse: Callable[[str, str], Any], **options: Any) -> Any:
    """A settings field read from the environment variable `env`, checked by `parse`."""
    return field(default=default, metadata={"env": env, "parse": parse}, **options)


@dataclass(frozen=True)
class Settings:
    """Everything both functions read from the environment. Field metadata names the variable."""

    # Out of repr: the URL may carry a password.
    redis_url: str = _var("REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url, repr=False)
    stream_key: str = _var("STREAM_KEY", "events", _text)
    # The stream as this many keys, spread over a Redis Cluster's primaries (shared/shards.py).
    stream_shards: int = _var("STREAM_SHARDS", 1, _positive_int)
    # REDIS_URL names any node of a Redis Cluster (ElastiCache or MemoryDB cluster mode).
    redis_cluster: bool = _var("REDIS_CLUSTER", False, _flag)
    consumer_group: str = _var("CONSUMER_GROUP", "archiver", _text)
    # Unset: a name unique to this process. Set it only if each process gets its own value.
    consumer_name: str | None = _var("CONSUMER_NAME", None, _optional_text)
    s3_bucket: str = _var("S3_BUCKET", "events-archive", _text)
    s3_prefix: str = _var("S3_PREFIX", "events/", _prefix)
    s3_endpoint_url: str | None = _var("S3_ENDPOINT_URL", None, _endpoint_url)
    flush_max_events: int = _var("FLUSH_MAX_EVENTS", 50_000, _positive_int)
    flush_max_bytes: int = _var("FLUSH_MAX_BYTES", 32 * 1024 * 1024, _flush_bytes)
    flush_interval_s: float = _var("FLUSH_INTERVAL_S", 60.0, _positive_float)
    claim_idle_ms: int = _var("CLAIM_IDLE_MS", 300_000, _positive_int)
    # 1 (fastest) to 9 (smallest). 3 is about twice as fast as gzip's usual 6 and ~14% larger.
    gzip_level: int = _var("GZIP_LEVEL", 3, _gzip_level)
    # How the consumer writes objects: gzip NDJSON (default) or Parquet (zstd).
    archive_format: str = _var("ARCHIVE_FORMAT", "ndjson", _archive_format)
    # Compaction: an hour is closed (and compacted) this long after it ends ...
    compact_grace_s: float = _var("COMPACT_GRACE_S", 900.0, _positive_float)
    # ... and a copy of an event already stored this many hours earlier is dropped.
    dedup_window_h: int = _var("DEDUP_WINDOW", 24, _positive_int)
    # A compaction's lock on an hour is a lease of this long, renewed while its run lives: a
    # killed run holds its hour this long at most.
    compact_lease_s: float = _var("COMPACT_LEASE_S", 30.0, _positive_float)
    redis_timeout_s: float = _var("REDIS_TIMEOUT_S", 2.0, _positive_float)
    # Ingest answers 2xx only once this many replicas hold the request's entry (WAIT); 0
    # answers as soon as the primary has it, and a failover may lose the last writes.
    redis_wait_replicas: int = _var("REDIS_WAIT_REPLICAS", 0, _count)
    # How long to wait for them before answering 503 replication_timeout.
    redis_wait_timeout_ms: int = _var("REDIS_WAIT_TIMEOUT_MS", 500, _positive_int)
    # Per process. Thousands of concurrent requests share these, waiting up to REDIS_TIMEOUT_S
    # for one (then 503), so a crowd of clients cannot exhaust Redis's `maxclients`.
    redis_max_connections: int = _var("REDIS_MAX_CONNECTIONS", 50, _positive_int)
    # Admission control: ingest answers 503 while the stream holds this many entries.
    stream_max_len: int = _var("STREAM_MAX_LEN", 100_000, _positive_int)
    # ... or this many bytes of entries (per shard: their fields' names and values), whatever
    # their sizes: Redis fills by bytes. Redis needs up to ~1.3x this (allocator rounding), so
    # 512 MiB leaves local/redis.conf's 1 GB room for dead letters, a consumer's read and the
    # requests in flight. Keep (shards per node) x this x 1.3 to about half of maxmemory.
    stream_max_bytes: int = _var("STREAM_MAX_BYTES", 512 * 1024 * 1024, _positive_int)
    # Consumer only. One read of the stream holds at most this many bytes of entries: it takes
    # this over the largest entry MAX_BODY_BYTES lets ingest write (at least one, at most 200),
    # so the consumer must be given ingest's MAX_BODY_BYTES. Shared out among shards.
    read_max_bytes: int = _var("READ_MAX_BYTES", 64 * 1024 * 1024, _positive_int)
    # An entry delivered more often than this without being archived is dead-lettered.
    max_deliveries: int = _var("MAX_DELIVERIES", 10, _positive_int)
    # Dead letters kept in Redis (every one is also stored under errors/ in the bucket).
    dead_letter_max_len: int = _var("DEAD_LETTER_MAX_LEN", 10_000, _positive_int)
    # Ingest and the consumer. Each process reads the privacy regulations in force (Redis's
    # `<STREAM_KEY>:privacy`) again at most this often: a suppression holds within this long.
    suppression_reload_s: float = _var("SUPPRESSION_RELOAD_S", 10.0, _positive_float)
    # Ingest only. Empty: anonymous requests are accepted (and the service says so loudly).
    write_keys: tuple[tuple[str, str], ...] = _var("WRITE_KEYS", (), _write_keys, repr=False)
    # Above what any SDK sends: RudderStack's JS SDK batches up to 512 KiB, its Android SDK
    # events up to 64 KiB (Segment's own limits are 500 KB and 32 KB).
    max_body_bytes: int = _var("MAX_BODY_BYTES", 1024 * 1024, _positive_int)
    max_event_bytes: int = _var("MAX_EVENT_BYTES", 64 * 1024, _positive_int)
    cors_allow_origin: str = _var("CORS_ALLOW_ORIGIN", "*", _text)
    # Ingest only. Off: no request metrics and no /metrics (the benchmark measures the cost).
    metrics_enabled: bool = _var("METRICS_ENABLED", True, _flag)
    # Ingest and the loop runner. When set, GET /metrics asks for it as a bearer token.
    metrics_token: str | None = _var("METRICS_TOKEN", None, _optional_text, repr=False)
    # Ingest and the loop runner. /metrics without METRICS_TOKEN is refused (403) unless this
    # opens it on purpose (shared/metrics_access.py).
    metrics_public: bool = _var("METRICS_PUBLIC", False, _flag)
    # Ingest only. The scheme and host browsers reach (https://api.example.com, a path prefix
    # kept): the settings document's apiHost and protocol. Unset: taken from the request, and
    # the document is Cache-Control: private.
    public_url: str | None = _var("PUBLIC_URL", None, _public_url)
    # Ingest only. Origins whose pages may post to us across Chrome's Private Network Access
    # check (a public page to a private address); none by default.
    private_network_origins: tuple[str, ...] = _var("PRIVATE_NETWORK_ORIGINS", (), _origins)
    # Ingest only. Proxies whose X-Forwarded-For is believed (networks), walked from the right
    # (functions/ingest/client_address.py); none by default: the peer is the client.
    trusted_proxies: tuple = _var("TRUSTED_PROXIES", (), _networks)
    # Ingest only (shared/enrichment/). What `context.ip` keeps of the client's address:
    # anonymize (IPv4 /24, IPv6 /48), full, or none.
    ip_handling: str = _var("IP_HANDLING", "anonymize", _ip_handling)
    # A MaxMind-format City database (GeoLite2-City): `context.location`. Opened by ingest at
    # start; missing or unreadable, ingest does not start.
    geoip_database: str | None = _var("GEOIP_DATABASE", None, _optional_text)
    # Events flagged `context.bot` are answered as accepted but not stored.
    drop_bots: bool = _var("DROP_BOTS", False, _flag)
    # Ingest only (shared/plans/). The tracking plan, a YAML or JSON file or an s3://bucket/key
    # object: events checked against it are tagged or blocked by its rules. Unreadable or
    # invalid at start, ingest does not start; re-read every TRACKING_PLAN_RELOAD_S seconds (a
    # new plan that cannot be used is refused with a warning, the old one stays).
    tracking_plan: str | None = _var("TRACKING_PLAN", None, _optional_text)
    tracking_plan_reload_s: float = _var("TRACKING_PLAN_RELOAD_S", 60.0, _positive_float)
    # Ingest only. Token buckets in Redis, counted in events (0: no limit), 10 s of burst each
    # (functions/ingest/rate_limits.py). Per source: a browser source's key is public, and this
    # bounds what anyone holding it (from however many addresses) takes from the others ...
    rate_limit_events_per_s: int = _var("RATE_LIMIT_EVENTS_PER_S", 50_000, _count)
    rate_limit_burst: int = _var("RATE_LIMIT_BURST", 500_000, _positive_int)
    # ... with overrides per source (`web=200/2000,backend=0`; 0 lifts both limits: a server
    # source's key is secret and one host sends all of its events from one address) ...
    rate_limit_sources: tuple[tuple[str, RateLimit], ...] = _var(
        "RATE_LIMIT_SOURCES", (), _source_rate_limits
    )
    # ... and per client address (an IPv6 /64 counts as one), a tenth of a source's: one holder
    # of a public key cannot use up its source for the other visitors. Above a NAT's or a
    # busy server's own traffic; below, lift the source (0) or raise this.
    rate_limit_address_events_per_s: int = _var("RATE_LIMIT_ADDRESS_EVENTS_PER_S", 5_000, _count)
    rate_limit_address_burst: int = _var("RATE_LIMIT_ADDRESS_BURST", 50_000, _positive_int)
    # Secrets Manager secrets (name or ARN), instead of plain variables: the write keys, in
    # WRITE_KEYS's form, and the Redis AUTH token (alone, or JSON with password and username).
    write_keys_secret: str | None = _var("WRITE_KEYS_SECRET", None, _optional_text)
    redis_auth_secret: str | None = _var("REDIS_AUTH_SECRET", None, _optional_text)
    # The privacy API's bearer token (functions/admin/): unset, its routes do not exist. From a
    # variable or from ADMIN_TOKEN_SECRET (the admin function's way), never both.
    admin_token: str | None = _var("ADMIN_TOKEN", None, _optional_text, repr=False)
    admin_token_secret: str | None = _var("ADMIN_TOKEN_SECRET", None, _optional_text)
    # How old a secret's value may get before it is read again (a rotated key is picked up).
    secrets_refresh_s: float = _var("SECRETS_REFRESH_S", 300.0, _positive_float)
    # Refuse a Redis URL without TLS (anything but rediss://): the deployed default.
    redis_require_tls: bool = _var("REDIS_REQUIRE_TLS", False, _flag)
    # The deletion pass on AWS (functions/privacy/) finds the objects holding a subject with
    # Athena: this workgroup, this Glue database (the template's tables), and query results
    # written here (unset: where the workgroup says).
    athena_workgroup: str | None = _var("ATHENA_WORKGROUP", None, _optional_text)
    athena_database: str = _var("ATHENA_DATABASE", "event_archive", _text)
    athena_output_location: str | None = _var("ATHENA_OUTPUT_LOCATION", None, _s3_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            env, parse = f.metadata["env"], f.metadata["parse"]
            default = "" if f.default in (None, ()) else str(f.default)
            values[f.name] = parse(env, environ.get(env, default))
        _read_secrets(values)
        return cls(**values)

    def __post_init__(self) -> None:
        # Entries wait in a live consumer's buffer for up to FLUSH_INTERVAL_S; claiming them
        # sooner would take work away from a healthy consumer and duplicate it.
        if self.claim_idle_ms <= self.flush_interval_s * 1000:
            raise ConfigError(
                f"CLAIM_IDLE_MS ({self.claim_idle_ms}) must be greater than "
                f"FLUSH_INTERVAL_S in milliseconds ({self.flush_interval_s * 1000:.0f})"
            )
        if self.redis_require_tls and not self.redis_url.startswith("rediss://"):
            raise ConfigError(
                "REDIS_URL must start with rediss:// (TLS) while REDIS_REQUIRE_TLS is on: "
                "the AUTH token and the events would cross the network in clear"
            )
        # WAIT's answer must arrive before the socket gives up on the connection.
        wait_ms = self.redis_wait_timeout_ms
        if self.redis_wait_replicas and wait_ms >= self.redis_timeout_s * 1000:
            raise ConfigError(
                f"REDIS_WAIT_TIMEOUT_MS ({wait_ms}) must be less than "
                f"REDIS_TIMEOUT_S in milliseconds ({self.redis_timeout_s * 1000:.0f})"
            )
        if self.admin_token is not None and self.admin_token in dict(self.write_keys).values():
            raise ConfigError(
                "ADMIN_TOKEN must not be a write key: a browser source's key is public"
            )


def _read_secrets(values: dict[str, Any]) -> None:
    """Read the configured secrets now, so that a missing secret or permission fails the start,
    not a first request. A value comes from a variable or a secret, never both."""
    keys_secret, auth_secret = values["write_keys_secret"], values["redis_auth_secret"]
    if keys_secret and values["write_keys"]:
        raise ConfigError("set WRITE_KEYS or WRITE_KEYS_SECRET, not both")
    if auth_secret and urlparse(values["redis_url"]).password is not None:
        raise ConfigError("REDIS_URL carries a password and REDIS_AUTH_SECRET is set: keep one")
    admin_secret = values["admin_token_secret"]
    if admin_secret and values["admin_token"]:
        raise ConfigError("set ADMIN_TOKEN or ADMIN_TOKEN_SECRET, not both")
    try:
        refresh_s = values["secrets_refresh_s"]
        if keys_secret:
            keys = secrets.cached(keys_secret, refresh_s, write_keys_from_secret)
            values["write_keys"] = keys.value()
        if auth_secret:
            secrets.cached(auth_secret, refresh_s, secrets.redis_credentials).value()
        if admin_secret:
            token = secrets.cached(admin_secret, refresh_s, admin_token_from_secret)
            values["admin_token"] = token.value()
    except secrets.SecretError as exc:
        raise ConfigError(f"cannot read a secret: {exc}") from None


def admin_token_from_secret(raw: str) -> str:
    """ADMIN_TOKEN_SECRET's value: the token itself, never empty (an emptied secret must not
    leave the privacy API answering to an empty bearer token)."""
    if not raw.strip():
        raise ConfigError("ADMIN_TOKEN_SECRET holds an empty token")
    return raw.strip()


def redacted_url(url: str) -> str:
    """A URL fit for logs and messages: its password (a Redis AUTH token, say) masked."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    return parts._replace(netloc=f"***@{parts.hostname}:{parts.port}").geturl()


ENV_VARS: tuple[str, ...] = tuple(f.metadata["env"] for f in fields(Settings))
