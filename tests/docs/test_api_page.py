"""Every route of the ingest app, built with every optional route switched on, is on the HTTP
API page: a route added without documentation fails here."""

from __future__ import annotations

import re
from pathlib import Path

from flask import Flask

from functions.ingest.app import create_app
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "api.md"

# Every optional route on: the privacy API (ADMIN_TOKEN) and /metrics (METRICS_ENABLED, the
# default); building the app connects to nothing.
EVERYTHING_ON = {"ADMIN_TOKEN": "a" * 32, "METRICS_ENABLED": "true", "WRITE_KEYS": "web:wk"}
CONVERTER = re.compile(r"<(?:(\w+)(?:\(([^)]*)\))?:)?(\w+)>")


def documented_paths(rule: str) -> list[re.Pattern[str]]:
    """The paths a rule serves, as patterns over the page: an `any(...)` converter is each of
    its values; any other variable part is whatever placeholder the page writes (`KEY`, `ID`)."""
    alternatives = [""]
    position = 0
    for match in CONVERTER.finditer(rule):
        literal = re.escape(rule[position : match.start()])
        converter, arguments, _ = match.groups()
        if converter == "any":
            values = [re.escape(value.strip()) for value in arguments.split(",")]
        else:
            values = [r"[A-Za-z_{}<>-]+"]
        alternatives = [done + literal + value for done in alternatives for value in values]
        position = match.end()
    tail = re.escape(rule[position:])
    return [re.compile(rf"(?<![\w/]){path}{tail}(?![\w/])") for path in alternatives]


def undocumented_routes(app: Flask, page: str) -> list[str]:
    code = " ".join(re.findall(r"`([^`]+)`", page))
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    missing = []
    for rule in sorted(rules):
        if rule.endswith("/") and rule.rstrip("/") in rules:
            continue  # a trailing-slash twin: the page says every Segment path has one
        missing += [p.pattern for p in documented_paths(rule) if not p.search(code)]
    return missing


def app_with_every_route() -> Flask:
    return create_app(Settings.from_env(EVERYTHING_ON))


def test_every_route_is_on_the_api_page() -> None:
    app = app_with_every_route()
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/regulations", "/metrics", "/v1/projects/<write_key>/settings"} <= rules
    assert undocumented_routes(app, PAGE.read_text()) == []


def test_the_page_says_trailing_slashes_are_served() -> None:
    assert "also answers with a trailing slash" in PAGE.read_text()


def test_a_route_added_without_documentation_is_caught() -> None:
    app = app_with_every_route()
    app.add_url_rule("/v1/new-thing/<thing_id>", "new_thing", lambda thing_id: "")
    assert undocumented_routes(app, PAGE.read_text()) == [
        r"(?<![\w/])/v1/new\-thing/[A-Za-z_{}<>-]+(?![\w/])"
    ]
    shortened = PAGE.read_text().replace("`/v1/t`", "`/v1/T`")
    assert any("/v1/t" in pattern for pattern in undocumented_routes(app, shortened))
