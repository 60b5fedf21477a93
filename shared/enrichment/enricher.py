"""The `Enricher`: what ingest adds to every event of a request once it is validated and stamped.

`Enricher(settings).enrich(events, address)` sets, in each event's `context`:
- `ip`: the request's address as IP_HANDLING has it, unless the event carries its own (which is
  cut the same way: addresses.py);
- `location`: from GEOIP_DATABASE, for the event's own `ip` if it sent one, else for the
  request's address (geo.py); a client-sent `location` is kept as sent;
- `parsedUserAgent`: from `userAgent` and client hints (user_agents.py);
- `bot: true` for crawlers and headless browsers among browser traffic (bots.py).
`parsedUserAgent` and `bot` are the server's fields, like `source` and `receivedAt`: a client's
own are replaced, or removed when the server has nothing to say. With DROP_BOTS, the events
flagged as bots are left out of what `enrich` returns.

Cost: what depends on the address is computed once per request; what depends on a user agent
is cached across requests (user agents repeat: a batch comes from one browser), and so are
the lookups of client-sent addresses. A context shared by events (the batch's own, which
`events.prepare` puts as such into every event that has none of its own) is enriched once:
its enrichment depends only on what it holds and on the request, so it is the same for all.
Per event, what remains is comparing its user agent and hints with the last ones (the deep
comparison of the hints is most of it) and setting three keys. `location` and
`parsedUserAgent` are set packed (`codec.packed`), as the events of a request share them: the
entry's encoding copies their bytes rather than walking them again for every event. So what
`enrich` returns is for `codec.encode_entry`; decoded, the values are the objects again.

Only ingest imports this package: the consumer's and the compactor's bundles do not ship its
libraries (tests/shared/test_layers.py).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from shared.codec import packed
from shared.enrichment import addresses, bots, geo, user_agents
from shared.settings import Settings

# Distinct user agents (and user agents with client hints) remembered across requests.
AGENT_CACHE = 8192
# Client hints longer than this (as JSON) are ignored: no browser sends them, and the cache
# would keep them.
MAX_HINTS_BYTES = 1024
# A user agent not in the cache costs 30 to 110 µs to parse and judge, a legitimate event about
# 15 µs in all: a request may have this many parsed, and one more per this many bytes of its
# body, so that a body of distinct user agents costs at most a few times a legitimate one. The
# events beyond are stored without `parsedUserAgent` and `bot`.
NEW_AGENTS_PER_REQUEST = 64
BODY_BYTES_PER_NEW_AGENT = 1024
# What enrichment may add to one event's MsgPack at most (events.max_stored_bytes adds it to
# each event's allowance): a `context` key (8) where the event had none, a map header grown
# from 1 to 3 bytes in the event and in its context (2 + 2); then each part's own bound.
CONTEXT_BYTES = 8 + 2 + 2
IP_BYTES = 3 + 1 + addresses.MAX_IP_CHARS

_MISSING = object()
_hints_key = msgspec.json.Encoder().encode


class Enricher:
    """Built once per process from Settings (opening GEOIP_DATABASE; ua-parser's and
    crawlerdetect's rules, about half a second to read, are read by the first enricher of a
    process and shared); `enrich` then runs once per request."""

    def __init__(self, settings: Settings) -> None:
        self.ip_handling = settings.ip_handling
        self.drop_bots = settings.drop_bots
        self.geo = (
            geo.GeoDatabase(settings.geoip_database, coarse=self.ip_handling != addresses.FULL)
            if settings.geoip_database
            else None
        )
        self._parser = user_agents.shared_parser()
        self._crawlers = bots.shared_detector()
        self._agents = _Lru(AGENT_CACHE)  # user agent: (parsedUserAgent, crawler)
        self._hinted = _Lru(AGENT_CACHE)  # (user agent, hints as JSON): parsedUserAgent
        self.max_added_bytes = (
            CONTEXT_BYTES
            + (IP_BYTES if self.ip_handling != addresses.NONE else 0)
            + (geo.MAX_LOCATION_BYTES if self.geo is not None else 0)
            + user_agents.MAX_PARSED_BYTES
            + bots.MAX_BOT_BYTES
        )

    def enrich(
        self, events: list[dict[str, Any]], address: Any, body_bytes: int
    ) -> list[dict[str, Any]]:
        """Enrich `events` (validated and stamped: each `context`, where present, is a dict) in
        place, for a request from `address` (an ipaddress address, or None when unknown) whose
        body had `body_bytes` (decompressed); the events to store: all of them, or without the
        bots under DROP_BOTS. They are ready to encode: `location` and `parsedUserAgent` are
        packed, so whatever reads events as sent (a tracking plan) reads them before."""
        ours = addresses.stored_form(address, self.ip_handling)
        located = self.geo.located(address) if self.geo is not None and address else None
        drop_bots = self.drop_bots
        kept = [] if drop_bots else events
        previous: Any = None
        bot = False
        blank: dict[str, Any] | None = None
        memo: list[Any] = [None, None, None, False]
        budget = [NEW_AGENTS_PER_REQUEST + body_bytes // BODY_BYTES_PER_NEW_AGENT]
        # The last context enriched by the slow path, as locals: what the next one is compared
        # with (its user agent and hints; None: nothing to compare with, or a crawler's).
        last_agent = last_hints = last_parsed = None
        for event in events:
            context = event.get("context")
            if context is None:
                if blank is None:  # one for every event without a context: all alike
                    blank = {}
                    self._enrich_context(blank, ours, located, memo, budget)
                if not blank:
                    if drop_bots:
                        kept.append(event)
                    continue
                context = event["context"] = blank
            if context is previous:
                pass
            elif (
                # The common case of a batch: a context like the last one enriched (the same
                # user agent and hints, nothing of the server's to replace, no client address),
                # so the same fields, set without asking again. Cheapest checks first.
                last_agent is not None
                and context.get("userAgent") == last_agent
                and "ip" not in context
                and "parsedUserAgent" not in context
                and "bot" not in context
                and context.get("userAgentData") == last_hints
            ):
                previous, bot = context, False
                if ours is not None:
                    context["ip"] = ours
                if located is not None and "location" not in context:
                    context["location"] = located
                if last_parsed is not None:
                    context["parsedUserAgent"] = last_parsed
            else:
                previous, bot = context, self._enrich_context(context, ours, located, memo, budget)
                last_agent = None if memo[3] else memo[0]
                last_hints, last_parsed = memo[1], memo[2]
            if drop_bots and not bot:
                kept.append(event)
        return kept

    def _enrich_context(
        self,
        context: dict[str, Any],
        ours: str | None,
        located: dict[str, Any] | None,
        memo: list[Any],
        budget: list[int],
    ) -> bool:
        """Enrich one context; whether it is a bot's. `memo`: the request's last user agent,
        client hints, their `parsedUserAgent` and crawler verdict; `budget`: how many user agents
        the request may still have parsed."""
        sent = context.get("ip", _MISSING)
        if sent is not _MISSING:
            if isinstance(sent, str):
                stored, address, counts = addresses.client_sent(sent, self.ip_handling)
            else:  # the field is a string
                stored, address, counts = None, None, True
            if counts:  # the event's own address: its own location
                located = self.geo.located(address) if self.geo is not None and address else None
            else:
                stored = ours  # a placeholder: as if none was sent
            if stored is None:
                del context["ip"]
            elif stored is not sent:
                context["ip"] = stored
        elif ours is not None:
            context["ip"] = ours
        if located is not None and "location" not in context:
            context["location"] = located
        # The server's fields: never the client's.
        context.pop("parsedUserAgent", None)
        context.pop("bot", None)
        user_agent = context.get("userAgent")
        if type(user_agent) is not str:
            return False
        hints = context.get("userAgentData")
        # The events of a batch carry the same user agent and hints: compared with the last
        # ones, they cost less than a cache's key.
        if user_agent == memo[0] and hints == memo[1]:
            parsed, crawler = memo[2], memo[3]
        else:
            parsed, crawler = self._agent_with(user_agent, hints, budget)
            memo[:] = user_agent, hints, parsed, crawler
        if parsed is not None:
            context["parsedUserAgent"] = parsed
        if crawler and bots.is_browser_traffic(context):
            context["bot"] = True
            return True
        return False

    def _agent_with(
        self, user_agent: str, hints: Any, budget: list[int]
    ) -> tuple[msgspec.Raw | None, bool]:
        """`parsedUserAgent` and the crawler verdict, from the caches, or parsed if `budget`
        (the request's count of parses left) allows; else nothing."""
        if len(user_agent) > user_agents.MAX_USER_AGENT_CHARS:  # absurd: not worth a parse
            parsed, crawler = None, False
        else:
            found = self._agents.get(user_agent, _MISSING)
            if found is _MISSING:
                if budget[0] <= 0:
                    return None, False
                budget[0] -= 1
                parsed, _ = self._parser.parse(user_agent)
                found = self._agents.put(
                    user_agent, (_packed(parsed), self._crawlers.is_crawler(user_agent))
                )
            parsed, crawler = found
        if type(hints) is dict:
            key = (user_agent, _hints_key(hints))
            if len(key[1]) <= MAX_HINTS_BYTES:  # real ones are 100 to 400 bytes
                hinted = self._hinted.get(key, _MISSING)
                if hinted is _MISSING:
                    if budget[0] <= 0:
                        return None, False
                    budget[0] -= 1
                    hinted = self._hinted.put(key, _packed(self._hinted_of(user_agent, hints)))
                parsed = hinted
        return parsed, crawler

    def _hinted_of(self, user_agent: str, hints: dict[str, Any]) -> dict[str, str] | None:
        parsed, family = (
            self._parser.parse(user_agent)
            if len(user_agent) <= user_agents.MAX_USER_AGENT_CHARS
            else (None, None)
        )
        return user_agents.with_hints(parsed, family, hints)


def _packed(value: dict[str, Any] | None) -> msgspec.Raw | None:
    return None if value is None else packed(value)


class _Lru:
    """A bounded least-recently-used cache (`get` and `put`, which returns the value)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, default: Any) -> Any:
        value = self._items.get(key, default)
        if value is not default:
            self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> Any:
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value
