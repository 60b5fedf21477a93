"""The set-up snippets of docs/sdks.md, read from the page itself rather than copied into the
tests, so that a snippet the tests run is the one readers copy.

A snippet is the one fenced block of a language that contains a marker (its import), and its
placeholders are replaced by a live server's URL and a write key."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "sdks.md"
HOST = "https://events.example.com"
WRITE_KEY = "<a key from WRITE_KEYS>"

_FENCED = re.compile(r"^```(?P<language>\w+)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
# `AnalyticsBrowser.load({ ... })`: its settings, one `name: 'string'` per option.
_BROWSER_LOAD = re.compile(r"AnalyticsBrowser\.load\(\{(?P<options>.*?)\}\)", re.DOTALL)
_OPTION = re.compile(r"(?P<name>\w+)\s*:\s*'(?P<value>[^']*)'")


def snippet(language: str, marker: str, page: Path = PAGE) -> str:
    """The one fenced `language` block of `page` that contains `marker`."""
    blocks = [
        match["code"]
        for match in _FENCED.finditer(page.read_text())
        if match["language"] == language and marker in match["code"]
    ]
    assert len(blocks) == 1, f"{page.name}: {len(blocks)} {language} blocks contain {marker!r}"
    return blocks[0]


def for_server(code: str, url: str, write_key: str) -> str:
    """`code` with the page's host and write-key placeholders replaced; both must be there."""
    for placeholder in (HOST, WRITE_KEY):
        assert placeholder in code, f"the snippet lost its placeholder {placeholder!r}:\n{code}"
    return code.replace(HOST, url).replace(WRITE_KEY, write_key)


def analytics_js_settings(url: str, write_key: str) -> dict[str, str]:
    """The settings the page's analytics.js snippet passes to `AnalyticsBrowser.load`, for a
    server at `url`: option names as documented, placeholders replaced."""
    code = snippet("js", "@segment/analytics-next")
    load = _BROWSER_LOAD.search(code)
    assert load, f"no AnalyticsBrowser.load({{...}}) in the analytics.js snippet:\n{code}"
    options = {m["name"]: m["value"] for m in _OPTION.finditer(load["options"])}
    assert set(options.values()) >= {HOST, WRITE_KEY}, options
    replaced = {WRITE_KEY: write_key, HOST: url}
    return {name: replaced.get(value, value) for name, value in options.items()}
