"""Secrets from AWS Secrets Manager: the write keys (WRITE_KEYS_SECRET) and the Redis AUTH token
(REDIS_AUTH_SECRET), so that neither sits in an environment variable that the Lambda console
and GetFunctionConfiguration show.

A secret is read once at start (a missing secret or permission fails the cold start, saying
which secret) and then again when its value is older than SECRETS_REFRESH_S, so a rotated key
is picked up without a deploy. A refresh that fails keeps the value it had: a Secrets Manager
hiccup never turns into refused requests. Nothing here ever logs or raises a secret's value.

boto3 is imported only when a secret is configured: locally and in containers, plain
environment variables work as before and cost nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.credentials import CredentialProvider

from shared.reloaded import Reloaded

log = logging.getLogger(__name__)

Fetch = Callable[[str], str]


class SecretError(RuntimeError):
    """A secret could not be read; the message names it, never its value."""


# Secrets Manager unreachable (no VPC endpoint, say) must cost a request seconds, not the
# minutes of botocore's default timeouts and retries.
SECRETS_MANAGER_TIMEOUT_S = 2
SECRETS_MANAGER_ATTEMPTS = 2


def fetch_from_secrets_manager(secret_id: str) -> str:
    import boto3  # lazily: only a deployment with secrets pays for botocore's import
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(
        connect_timeout=SECRETS_MANAGER_TIMEOUT_S,
        read_timeout=SECRETS_MANAGER_TIMEOUT_S,
        retries={"max_attempts": SECRETS_MANAGER_ATTEMPTS, "mode": "standard"},
    )
    try:
        answer = boto3.client("secretsmanager", config=config).get_secret_value(SecretId=secret_id)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise SecretError(f"secret {secret_id}: {code}") from None
    except BotoCoreError as exc:
        raise SecretError(f"secret {secret_id}: {type(exc).__name__}") from None
    if "SecretString" not in answer:
        raise SecretError(f"secret {secret_id}: a binary secret; store it as a string")
    return answer["SecretString"]


class CachedSecret(Reloaded):
    """One secret's value, as `parse` makes it of the secret's string, re-read when older than
    `max_age_s`. The first read raises what fetching or parsing raises; a later one that fails
    either way (a value rotated to garbage, say) keeps the value in use, with a warning."""

    def __init__(
        self,
        secret_id: str,
        max_age_s: float,
        fetch: Fetch = fetch_from_secrets_manager,
        clock: Callable[[], float] = time.monotonic,
        parse: Callable[[str], Any] = str,
    ) -> None:
        super().__init__(
            secret_id, max_age_s, fetch, parse, clock, "secret", (SecretError, ValueError)
        )
        self.secret_id = secret_id


_cache: dict[str, CachedSecret] = {}


def cached(secret_id: str, max_age_s: float, parse: Callable[[str], Any] = str) -> CachedSecret:
    """The process's one cache of `secret_id` (parsed by `parse`: each secret has one use),
    shared by everything that reads it."""
    if secret_id not in _cache:
        _cache[secret_id] = CachedSecret(secret_id, max_age_s, parse=parse)
    return _cache[secret_id]


def redis_credentials(value: str) -> tuple[str, ...]:
    """(password,) or (username, password), from a secret holding the AUTH token itself, or
    a JSON object with "password" (and "username", for an ACL user), as Secrets Manager's
    rotation templates store them."""
    try:
        document: Any = json.loads(value)
    except ValueError:
        document = None
    if isinstance(document, dict):
        password = document.get("password")
        if not isinstance(password, str) or not password:
            raise SecretError('the Redis secret is JSON without a "password" string')
        username = document.get("username")
        return (username, password) if isinstance(username, str) and username else (password,)
    if not value.strip():
        raise SecretError("the Redis secret is empty")
    return (value.strip(),)


class RedisCredentials(CredentialProvider):
    """redis-py's credential provider: each new connection authenticates with the secret's
    current credentials (`cached(..., parse=redis_credentials)`); connections already open
    stay authenticated."""

    def __init__(self, secret: CachedSecret) -> None:
        self.secret = secret

    def get_credentials(self) -> tuple[str, ...]:
        return self.secret.value()
