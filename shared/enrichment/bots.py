"""`context.bot`: crawlers and headless automation, by crawlerdetect's maintained list.

Only browser traffic is judged: an event sent by a browser SDK (`context.library.name`), or
carrying client hints (`context.userAgentData`, which only browsers have). A server SDK's events
are never bots, whatever their user agent: `python-requests` or `axios` there is the server
itself, and PostHog once dropped real server traffic that way.

The verdict is crawlerdetect's (its list of crawler patterns, matched after its exclusions strip
the tokens every browser has), so `HeadlessChrome` is a bot (its generic `headless` pattern;
tests/shared/enrichment/test_bots.py keeps that true). crawlerdetect matches with Python's `re`
over one alternation of about 1,500 patterns: 0.1 to 4 ms per user agent, seconds for a 10 KB
one. So the patterns are compiled into ua-parser-rs's Rust matcher (the `regex` crate, which
prefilters by literals and never backtracks), built once at start (about 0.3 s); the few that
the Rust syntax cannot express (look-arounds) stay with `re`. A user agent that no pattern
matches as sent is not a crawler; one that matches is matched again after crawlerdetect's
exclusions, as crawlerdetect does. User agents longer than MAX_USER_AGENT_CHARS are not judged.
"""

from __future__ import annotations

import functools
import re

import ua_parser_rs
from crawlerdetect.providers.crawlers import data as CRAWLER_PATTERNS
from crawlerdetect.providers.exclusions import data as EXCLUSION_PATTERNS

from shared.enrichment.user_agents import MAX_USER_AGENT_CHARS

# `context.library.name` of the browser SDKs this service serves: analytics.js (classic and
# analytics-next both say "analytics.js") and RudderStack's JavaScript SDK (v1.1 and v3).
BROWSER_LIBRARIES = frozenset({"analytics.js", "RudderLabs JavaScript SDK"})
# Syntax of Python's `re` that the Rust `regex` crate lacks: look-arounds and back-references.
_LOOK_AROUND = re.compile(r"\(\?<?[=!]|\\[1-9]")
# What `context.bot` adds to an event: "bot" (4) and true (1).
MAX_BOT_BYTES = 5


class CrawlerDetector:
    """`is_crawler(user_agent)`: crawlerdetect's verdict, fast."""

    def __init__(self) -> None:
        python = [p for p in CRAWLER_PATTERNS if _LOOK_AROUND.search(p)]
        rust = [p for p in CRAWLER_PATTERNS if not _LOOK_AROUND.search(p)]
        try:
            self._rust = _rust_matcher(rust)
        except Exception:
            python += [p for p in rust if not _compiles_in_rust(p)]
            self._rust = _rust_matcher([p for p in rust if p not in python])
        self._python = re.compile("|".join(python), re.IGNORECASE) if python else None
        self._exclusions = re.compile("|".join(EXCLUSION_PATTERNS), re.IGNORECASE)

    def _matches(self, text: str) -> bool:
        if self._rust.extract(text) is not None:
            return True
        return self._python is not None and self._python.search(text) is not None

    def is_crawler(self, user_agent: str) -> bool:
        if len(user_agent) > MAX_USER_AGENT_CHARS or not user_agent.strip():
            return False
        try:
            if not self._matches(user_agent):  # browsers' agents end here
                return False
        except UnicodeEncodeError:  # a lone surrogate: no crawler's name
            return False
        stripped = self._exclusions.sub("", user_agent).strip()
        return bool(stripped) and self._matches(stripped)


@functools.cache
def shared_detector() -> CrawlerDetector:
    """The process's one detector, made on first use: compiling crawlerdetect's patterns takes
    about a third of a second, and a detector keeps nothing of any request, so every app a
    process builds (a test session builds hundreds) shares it."""
    return CrawlerDetector()


def _rust_matcher(patterns: list[str]) -> ua_parser_rs.DeviceExtractor:
    return ua_parser_rs.DeviceExtractor([(p, "i", "crawler", None, None) for p in patterns])


def _compiles_in_rust(pattern: str) -> bool:
    try:
        _rust_matcher([pattern])
    except Exception:
        return False
    return True


def is_browser_traffic(context: dict) -> bool:
    """Sent by a browser SDK, or carrying client hints."""
    if isinstance(context.get("userAgentData"), dict):
        return True
    library = context.get("library")
    if not isinstance(library, dict):
        return False
    name = library.get("name")
    return isinstance(name, str) and name in BROWSER_LIBRARIES
