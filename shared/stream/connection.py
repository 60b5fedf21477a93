"""The Redis client every part of the stream uses, and how a consumer names itself.

`connect` builds a client that fails fast, plain or cluster (REDIS_CLUSTER), with its token
from REDIS_AUTH_SECRET when set. May touch: settings and the secrets cache; nothing here
sends a command except the cluster client's first look at its slot map.
"""

from __future__ import annotations

import os
import secrets
import socket

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import secrets as shared_secrets
from shared.settings import Settings

Client = redis.Redis | redis.RedisCluster
# What a Redis that cannot answer raises: redis-py's cluster client raises some errors (no node
# reachable, a slot no node serves) outside RedisError.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)


def connect(settings: Settings) -> Client:
    """A client that fails fast: bounded timeouts and a single immediate retry, on a broken
    connection only (a pooled socket may be stale after a Redis restart), never on a timeout,
    after which the command may have run. Its pool holds at most REDIS_MAX_CONNECTIONS; a caller
    finding none free waits up to REDIS_TIMEOUT_S, then gets a ConnectionError. redis-py uses
    hiredis to parse replies.

    With REDIS_CLUSTER, redis-py's cluster client: it follows MOVED and ASK redirections and,
    after a failover, asks the cluster for its new slot map; every command here names one key
    (or keys of one slot). It retries once, at once, after a broken connection or a timeout
    (having refreshed its slot map), not the ten times with backoff it would by default: a
    request must fail fast. It contacts the cluster when it is made."""
    if settings.redis_cluster:
        return redis.RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            health_check_interval=30,
            credential_provider=_credentials(settings),
            retry=Retry(NoBackoff(), 1),
        )
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
        credential_provider=_credentials(settings),
    )
    return redis.Redis(connection_pool=pool)


def _credentials(settings: Settings) -> shared_secrets.RedisCredentials | None:
    """REDIS_AUTH_SECRET's token, read again as it ages, for each new connection."""
    if settings.redis_auth_secret is None:
        return None
    secret = shared_secrets.cached(
        settings.redis_auth_secret, settings.secrets_refresh_s, shared_secrets.redis_credentials
    )
    return shared_secrets.RedisCredentials(secret)


def out_of_memory(exc: BaseException) -> bool:
    """Whether Redis refused a write for maxmemory: Redis 7 says so as OutOfMemoryError, 6.2
    inside a script as a script error quoting OOM."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return True
    return isinstance(exc, redis.exceptions.ResponseError) and "OOM" in str(exc)


def unique_consumer_name() -> str:
    """Host and pid say where a consumer ran; the random part keeps reused pids apart."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
