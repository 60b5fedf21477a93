"""Which token buckets a request's events are taken from, and refusing at once, before its
body is read, a request whose bucket Redis found empty a moment ago.

Two limits, counted in events, both token buckets kept in Redis beside the stream key and
checked by the append script itself (shared/token_bucket.py), so they cost no round trip:

- per source: RATE_LIMIT_EVENTS_PER_S, up to RATE_LIMIT_BURST, or the source's own values in
  RATE_LIMIT_SOURCES (`web=200/2000`; a burst left out keeps the default's seconds of burst).
  A browser source's key is in every page that sends its events: this bounds what anyone
  holding it can send, and what a flood of it takes from the other sources. With WRITE_KEYS
  unset there is one source, `anonymous`, whose bucket is named so;
- per client address (client_address.py; an IPv6 client counts as its /64, which one
  subscriber usually holds whole): RATE_LIMIT_ADDRESS_EVENTS_PER_S, up to
  RATE_LIMIT_ADDRESS_BURST, whatever the source, so that one holder of a public key cannot
  use up its source's bucket for everyone else.

A source set to 0 in RATE_LIMIT_SOURCES (`backend=0`) takes from neither: a server source's
key is secret, and one server host sends all of its events from one address. 0 for a default
turns that limit off.

A bucket's name never holds an address: it holds a BLAKE2b digest of it (or of the /64),
unkeyed. The keys live seconds (until the bucket is full again), and key names show in Redis's
tooling (SLOWLOG, MONITOR, key scans): the digest keeps addresses out of plain sight there. It
is no secret from someone holding Redis, who could test every IPv4 address; a keyed digest
would need a secret every ingest process shares and Redis does not hold, which anonymous mode
does not have.

Refusing early: when Redis refuses a request, this process remembers that bucket until a
request of one event could pass. Another request naming it meanwhile, by its address, or by a
source known from a header, is refused before its body is read, so a flood from one address or
key costs the server little more than reading its headers. Never a request Redis would admit:
a refused request takes no tokens, so remembering a large one's own wait would let anyone
holding a public key keep a source's small requests out at no cost of their own.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import time

from functions.ingest.client_address import Address
from shared.settings import RateLimit, Settings
from shared.stream import RateLimited
from shared.token_bucket import Bucket

log = logging.getLogger(__name__)

# The one source of anonymous mode (WRITE_KEYS unset): its bucket is `source:anonymous`.
ANONYMOUS = "anonymous"
# A metric's source for a request refused before its body (which held its key) was read.
UNKNOWN_SOURCE = "unknown"
# A per-source burst left out keeps the default's ratio; this, when the default has no rate.
DEFAULT_BURST_S = 10
# Remembered refusals past this many are pruned (expired first, then all): an attacker with
# many addresses cannot grow the process's memory.
MAX_REMEMBERED = 10_000
# An IPv6 subscriber is given a /64 (or more): addresses within it are one client.
IPV6_CLIENT_PREFIX = 64


class RateLimits:
    """The buckets of each request, from the settings; one per ingest process."""

    def __init__(self, settings: Settings) -> None:
        default = RateLimit(settings.rate_limit_events_per_s, settings.rate_limit_burst)
        burst_s = default.burst / default.events_per_s if default.events_per_s else DEFAULT_BURST_S
        self._default = _limit(default)
        self._sources = {
            source: _limit(RateLimit(limit.events_per_s, limit.burst or _burst(limit, burst_s)))
            for source, limit in settings.rate_limit_sources
        }
        self._address = _limit(
            RateLimit(settings.rate_limit_address_events_per_s, settings.rate_limit_address_burst)
        )
        self._source_buckets: dict[str, tuple[Bucket, ...]] = {}
        self._refused: dict[str, tuple[float, Bucket]] = {}
        _warn_of_unknown_sources(set(self._sources), settings)

    def buckets(self, source: str | None, address: Address | None) -> tuple[Bucket, ...]:
        """What a request of `source` (None: anonymous mode) from `address` takes from."""
        name = ANONYMOUS if source is None else source
        if self._lifted(name):
            return ()
        buckets = self._source_buckets.get(name)
        if buckets is None:
            limit = self._sources.get(name, self._default)
            buckets = () if limit is None else (Bucket(f"source:{name}", *limit),)
            self._source_buckets[name] = buckets
        if self._address is not None and address is not None:
            buckets += (Bucket(address_bucket_name(address), *self._address),)
        return buckets

    def refuse_early(self, address: Address | None, source: str | None, known: bool) -> None:
        """Raise RateLimited if Redis lately refused this address's bucket, or the source's
        when `known` (its key came before the body, or anonymous mode)."""
        if not self._refused:
            return
        name = ANONYMOUS if source is None else source
        if known and self._lifted(name):
            return
        names = [address_bucket_name(address)] if address is not None else []
        if known:
            names.append(f"source:{name}")
        now = time.monotonic()
        for name in names:
            until, bucket = self._refused.get(name, (0.0, None))
            if bucket is not None and until > now:
                raise RateLimited(bucket, until - now)

    def _lifted(self, source: str) -> bool:
        """Set to 0 in RATE_LIMIT_SOURCES: a server source, which no bucket limits."""
        return source in self._sources and self._sources[source] is None

    def remember(self, refused: RateLimited, events: int) -> None:
        """Refuse early the bucket Redis just refused a request of `events` from, until one
        event could pass."""
        wait_s = _wait_for_one_event(refused, events)
        if wait_s <= 0:
            return
        now = time.monotonic()
        if len(self._refused) >= MAX_REMEMBERED:
            self._refused = {name: kept for name, kept in self._refused.items() if kept[0] > now}
            if len(self._refused) >= MAX_REMEMBERED:
                self._refused.clear()
        self._refused[refused.bucket.name] = (now + wait_s, refused.bucket)


def _wait_for_one_event(refused: RateLimited, events: int) -> float:
    """How long until the refused bucket holds what one event needs: a request of n events
    waits for min(n, burst) tokens (shared/token_bucket.py), gained at `events_per_s`."""
    bucket = refused.bucket
    needed, least = min(events, bucket.burst), min(1, bucket.burst)
    return refused.wait_s - (needed - least) / bucket.events_per_s


@functools.lru_cache(maxsize=4096)  # a client sends many requests; the digest is the cost
def address_bucket_name(address: Address) -> str:
    """`address:` and a digest of the IPv4 address, or of the IPv6 address's /64."""
    packed = address.packed
    if isinstance(address, ipaddress.IPv6Address):
        packed = packed[: IPV6_CLIENT_PREFIX // 8]
    return "address:" + hashlib.blake2b(packed, digest_size=12).hexdigest()


def metric_labels(source: str | None, bucket: Bucket) -> tuple[str, str]:
    """A refusal's labels: its source (`anonymous`, or `unknown` when refused before the
    body that named it was read) and its limit (`source` or `address`). Both come from
    configuration, so they stay few."""
    return (ANONYMOUS if source is None else source), bucket.name.partition(":")[0]


def _warn_of_unknown_sources(named: set[str], settings: Settings) -> None:
    """A source named in RATE_LIMIT_SOURCES that no write key has is most likely a typo,
    which would leave the source it meant on the default limit."""
    known = {source for source, _ in settings.write_keys} or {ANONYMOUS}
    for source in sorted(named - known):
        log.warning(
            "RATE_LIMIT_SOURCES names %r, which no write key has (sources: %s)",
            source,
            ", ".join(sorted(known)),
        )


def _limit(limit: RateLimit) -> tuple[float, float] | None:
    """(events_per_s, burst), or None for no limit (a rate of 0)."""
    return (limit.events_per_s, limit.burst) if limit.events_per_s else None


def _burst(limit: RateLimit, burst_s: float) -> int:
    return max(1, round(limit.events_per_s * burst_s))
