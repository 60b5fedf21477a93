"""Who may scrape `/metrics`: the one rule the ingest app and the loop runner both apply.

Metrics are closed by default. They name the sources, show the backlog and the refusals, and
every scrape of the ingest function makes Redis work: nothing an anonymous visitor should get.
A scrape needs METRICS_TOKEN as a bearer token; METRICS_PUBLIC=true opens `/metrics` to anyone
who reaches the port (`make run` does, since it serves on loopback only).

Without either, a scrape is answered 403, not 401: no credential could open it (there is no
token to send), so the answer points at the configuration; 404 would hide the route from the
operator whose scraper gets it, not from an attacker, who learns nothing from either.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass


@dataclass(frozen=True)
class Refusal:
    """Why a scrape is refused: the HTTP status and a message for the scraper's operator."""

    status: int
    message: str


NEEDS_TOKEN = Refusal(401, "/metrics needs METRICS_TOKEN as a bearer token")
CLOSED = Refusal(
    403,
    "/metrics is closed: set METRICS_TOKEN (a bearer token for the scraper) or METRICS_PUBLIC=true",
)


def refusal(token: str | None, public: bool, authorization: str | None) -> Refusal | None:
    """Why a scrape carrying this `Authorization` header is refused; None if it may have the
    metrics. A token, once set, is always asked for, METRICS_PUBLIC or not."""
    if token is not None:
        return None if bearer_matches(authorization or "", token) else NEEDS_TOKEN
    return None if public else CLOSED


def closed_notice(token: str | None, public: bool) -> str | None:
    """The line a server logs at start when nothing can scrape it; None when something can."""
    if token is None and not public:
        return (
            "/metrics is closed: scrapes are refused (403) until METRICS_TOKEN is set (the "
            "scraper sends it as a bearer token) or METRICS_PUBLIC=true opens it to anyone "
            "who reaches this port"
        )
    return None


def bearer_matches(authorization: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time as SHA-256 digests, as write
    keys are (functions/ingest/auth.py): compared as they are, a wrong length would answer
    sooner, telling the token's length."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(_digest(given), _digest(token))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()
