"""`context.parsedUserAgent`: `browser`, `browserVersion`, `os`, `osVersion` and `device`, from
`context.userAgent`, with client hints (`context.userAgentData`) preferred where present.

The user agent is parsed by ua-parser with its Rust matcher (ua-parser-rs), over the rules of
ua-parser-builtins; the names are ua-parser's families (`Chrome`, `Mobile Safari`, `Mac OS X`,
`iPhone`), and "Other" (nothing recognised) is left out. Only strings of at most
`MAX_USER_AGENT_CHARS` are parsed: real ones are a few hundred characters, and an absurd one
is stored without enrichment rather than spent time on.

Client hints are what analytics.js sends from `navigator.userAgentData`: `{brands: [{brand,
version}], mobile, platform}`, and with high-entropy hints also `fullVersionList`,
`platformVersion` and `model`. Chrome freezes much of its user agent string (the OS version,
the device model), and a browser built on Chromium may only say so in its brands. So with hints:
- `browser` is the first brand that is neither GREASE (`Not A(Brand` and its variants, which
  Chrome adds so that servers do not match brands exactly) nor `Chromium`, else `Chromium`;
  named as ua-parser names it (`Google Chrome` is `Chrome`), and where the string's family is
  the same browser more precisely (`Chrome Mobile`), that family;
- `browserVersion` that brand's version in `fullVersionList`, else in `brands`;
- `os` the platform (`macOS` is `Mac OS X`), and `osVersion` only `platformVersion`: the string's
  OS version is frozen by Chrome (`Windows NT 10.0` on Windows 11, `Android 10`);
- `device` the `model`, else the string's device.
Hints of any other shape are ignored.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ua_parser import BestAvailableResolver, Domain, load_lazy_builtins

from shared.enrichment.text import MAX_TEXT_BYTES, capped

MAX_USER_AGENT_CHARS = 512
# Hints beyond this many brands are not looked at (Chrome sends three).
MAX_BRANDS = 8
FIELDS = ("browser", "browserVersion", "os", "osVersion", "device")
# The most MsgPack bytes a `parsedUserAgent` object holds, key included: "parsedUserAgent"
# (16), a map header (1), five strings of at most MAX_TEXT_BYTES (key, a 2-byte header, text).
MAX_PARSED_BYTES = 16 + 1 + sum(len(key) + 1 + 2 + MAX_TEXT_BYTES for key in FIELDS)

UNKNOWN = "Other"
GREASE = re.compile(r"[\s;]*Not[^a-zA-Z0-9]*A[^a-zA-Z0-9]*Brand[\s;]*", re.IGNORECASE)
# Brand names of client hints as ua-parser names the same browsers.
BRAND_FAMILIES = {
    "Google Chrome": "Chrome",
    "Microsoft Edge": "Edge",
    "Opera GX": "Opera",
    "YaBrowser": "Yandex Browser",
    "Yandex": "Yandex Browser",
    "Android WebView": "Chrome Mobile WebView",
}
PLATFORM_FAMILIES = {"macOS": "Mac OS X", "Chromium OS": "Chrome OS"}
UNKNOWN_PLATFORMS = {"", "Unknown"}


class UserAgentParser:
    """ua-parser's resolver, made once (reading its rules takes about 0.2 s)."""

    def __init__(self) -> None:
        self._resolve = BestAvailableResolver(load_lazy_builtins())

    def parse(self, user_agent: str) -> tuple[dict[str, str] | None, str | None]:
        """`parsedUserAgent` of a user agent string, or None; and the browser family alone
        (what hints are compared with)."""
        if len(user_agent) > MAX_USER_AGENT_CHARS:
            return None, None
        try:
            result = self._resolve(user_agent, Domain.ALL)
        except UnicodeEncodeError:  # a lone surrogate (JSON decoding refuses them; not Python)
            return None, None
        parsed: dict[str, str] = {}
        family = None
        if (agent := result.user_agent) is not None and agent.family != UNKNOWN:
            family = parsed["browser"] = capped(agent.family)
            _version(parsed, "browserVersion", agent.major, agent.minor, agent.patch)
        if (system := result.os) is not None and system.family != UNKNOWN:
            parsed["os"] = capped(system.family)
            _version(parsed, "osVersion", system.major, system.minor, system.patch)
        if (device := result.device) is not None and device.family != UNKNOWN:
            parsed["device"] = capped(device.family)
        return {k: v for k, v in parsed.items() if v} or None, family


@functools.cache
def shared_parser() -> UserAgentParser:
    """The process's one parser, made on first use: reading ua-parser's rules takes about a
    quarter of a second, and a parser keeps nothing of any request, so every app a process
    builds (a test session builds hundreds) shares it."""
    return UserAgentParser()


def with_hints(
    parsed: dict[str, str] | None, family: str | None, hints: Any
) -> dict[str, str] | None:
    """`parsed` (from the string) with what client hints say instead, where they say it. Hints
    of the wrong shape change nothing."""
    if not isinstance(hints, dict):
        return parsed
    brands = _brands(hints.get("brands"))
    platform = hints.get("platform")
    if brands is None or not isinstance(platform, str):
        return parsed
    result = dict(parsed or {})
    if brands:
        brand, version = _preferred(brands)
        named = BRAND_FAMILIES.get(brand, brand)
        precise = family is not None and (family == named or family.startswith(named + " "))
        result["browser"] = capped(family if precise else named)
        result.pop("browserVersion", None)
        full = _brands(hints.get("fullVersionList")) or []
        version = next((v for b, v in full if b == brand), version)
        _set(result, "browserVersion", version)
    if platform.strip() not in UNKNOWN_PLATFORMS:
        result["os"] = capped(PLATFORM_FAMILIES.get(platform, platform))
        result.pop("osVersion", None)
        _set(result, "osVersion", hints.get("platformVersion"))
    _set(result, "device", hints.get("model"))
    return {k: v for k, v in result.items() if v} or None


def _brands(value: Any) -> list[tuple[str, str]] | None:
    """(brand, version) pairs that are not GREASE, or None if `value` is not such a list."""
    if not isinstance(value, list):
        return None
    pairs = []
    for item in value[:MAX_BRANDS]:
        if not isinstance(item, dict):
            return None
        brand, version = item.get("brand"), item.get("version")
        if not isinstance(brand, str) or not isinstance(version, str):
            return None
        if brand.strip() and not GREASE.fullmatch(brand):
            pairs.append((brand.strip(), version))
    return pairs


def _preferred(brands: list[tuple[str, str]]) -> tuple[str, str]:
    """A specific browser before the engine it is built on."""
    return next((pair for pair in brands if pair[0] != "Chromium"), brands[0])


def _version(parsed: dict[str, str], key: str, *parts: str | None) -> None:
    kept = []
    for part in parts:
        if not part:
            break
        kept.append(part)
    if kept:
        _set(parsed, key, ".".join(kept))


def _set(parsed: dict[str, str], key: str, value: Any) -> None:
    if text := capped(value.strip() if isinstance(value, str) else None):
        parsed[key] = text
