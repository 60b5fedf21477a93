"""analytics.js (`@segment/analytics-next`, bundled from npm) in a real Chromium delivers every
event into the archive with nothing changed but its `cdnURL`.

A page on another origin (its own http.server port) loads the bundle and runs the scenarios of
`js/browser/page.js` in headless Chromium, driven by playwright-core (`js/browser/drive.cjs`):
analytics.js's default delivery (one request per event, CORS-preflighted), its batching
delivery (`/v1/b`), and the unload paths (its batching flush on `pagehide`, `sendBeacon` and
keepalive `fetch` to `/v1/t`). Every request the browser made must have succeeded, gone only to
the page's or the ingest service's origin (no CDN: segment.com is unreachable here), and been
answered 2xx; the archive must then hold exactly the events sent, under the key's source.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

from shared.settings import Settings
from tests.conftest import gunicorn_serving
from tests.sdks import documented
from tests.sdks.conftest import (
    WRITE_KEY,
    archive_until_complete,
    assert_archived_as_sent,
)

ROUNDS = 3  # of each call per scenario
SCENARIOS = [
    {"name": "standard", "rounds": ROUNDS},
    {"name": "batching", "rounds": ROUNDS + 2},
    {"name": "unload", "rounds": ROUNDS, "navigateAway": True},
]
# The ingest paths the page saw each scenario post to. The unload scenario's requests leave
# after its document is gone, so the browser reports them to no page: gunicorn's access log
# is where they (and the CORS preflights, which browsers keep from pages too) are checked.
PAGE_SEEN_POSTS = {
    "standard": {"/v1/p", "/v1/i", "/v1/t", "/v1/g", "/v1/s", "/v1/a"},
    "batching": {"/v1/b"},
    "unload": set(),
}
# The first test to use node_env may pay for `npm ci` (a few seconds with a warm registry).
pytestmark = pytest.mark.timeout(300)
ACCESS_LOG_FORMAT = '%(m)s %(U)s %(s)s "%({content-type}i)s" "%({origin}i)s"'


@pytest.fixture
def access_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """gunicorn's access log (off in its config), switched on for the next gunicorn started."""
    path = tmp_path / "access.log"
    arguments = f"--access-logfile {shlex.quote(str(path))} "
    arguments += f"--access-logformat {shlex.quote(ACCESS_LOG_FORMAT)}"
    monkeypatch.setenv("GUNICORN_CMD_ARGS", arguments)
    return path


@pytest.fixture
def gunicorn_url(access_log: Path, settings: Settings) -> Iterator[str]:
    # Without the readiness request, which the access log would show: every line is the page's.
    with gunicorn_serving(settings, probe=False) as url:
        yield url


def read_access_log(path: Path) -> list[dict[str, str]]:
    lines = []
    for line in path.read_text().splitlines():
        method, url_path, status, rest = line.split(" ", 3)
        content_type, origin = shlex.split(rest)
        fields = {"method": method, "path": url_path, "status": status}
        lines.append({**fields, "contentType": content_type, "origin": origin})
    return lines


def test_analytics_next_in_chromium_delivers_every_event(
    node_env, chromium, settings, http_s3, gunicorn_url, page_origin, access_log
):
    assert urlparse(page_origin).port != urlparse(gunicorn_url).port  # two origins: CORS applies
    config = {
        "chromium": chromium,
        "pageUrl": f"{page_origin}/page.html",
        "navigateAwayUrl": "about:blank",
        "cdn": gunicorn_url,
        "writeKey": WRITE_KEY,
        # The settings docs/sdks.md tells readers to load analytics.js with, read from it.
        "settings": documented.analytics_js_settings(gunicorn_url, WRITE_KEY),
        "scenarios": SCENARIOS,
    }
    log = node_env.run("browser/drive.cjs", config, timeout_s=60)
    requests = log["requests"]

    # What the pages saw: nothing from or to anywhere else (segment.com's CDN and API are
    # unreachable here), no failure, only 2xx from the ingest service.
    elsewhere = [r for r in requests if not r["url"].startswith((page_origin, gunicorn_url))]
    assert not elsewhere, f"requests to other origins: {elsewhere}"
    failed = [r for r in requests if r["failure"]]
    assert not failed, f"failed requests: {failed}"
    ours = [r for r in requests if r["url"].startswith(gunicorn_url)]
    refused = [r for r in ours if r["status"] is None or not 200 <= r["status"] < 300]
    assert not refused, f"the ingest service answered non-2xx (or nothing): {refused}"
    assert not log["pageErrors"], log["pageErrors"]
    assert not log["console"], f"errors or warnings in the page's console: {log['console']}"

    settings_url = f"{gunicorn_url}/v1/projects/{WRITE_KEY}/settings"
    for scenario in SCENARIOS:
        name = scenario["name"]
        result = log["scenarios"][name]
        assert result["errors"] == [], (name, result["errors"])
        assert not [e for e in result["sent"] if "failedDelivery" in e], (name, result["sent"])
        assert result["networkIdle"], f"{name}: requests still open after 10 s"
        mine = [r for r in ours if r["scenario"] == name]
        assert [r["url"] for r in mine if r["method"] == "GET"] == [settings_url], (name, mine)
        posted = {urlparse(r["url"]).path for r in mine if r["method"] == "POST"}
        assert posted == PAGE_SEEN_POSTS[name], (name, mine)
    assert log["scenarios"]["standard"]["keepaliveStatus"] == 200

    # What gunicorn saw, unload requests and CORS preflights included: every answer a 2xx,
    # every request from the page's origin, only the paths analytics.js and the page use.
    served = read_access_log(access_log)
    assert served, "gunicorn logged no request"
    not_2xx = [line for line in served if not line["status"].startswith("2")]
    assert not not_2xx, f"gunicorn answered non-2xx: {not_2xx}"
    assert {line["origin"] for line in served} == {page_origin}, served
    served_counts = Counter((line["method"], line["path"]) for line in served)
    assert served_counts[("GET", f"/v1/projects/{WRITE_KEY}/settings")] == len(SCENARIOS)
    posts = {path for method, path in served_counts if method == "POST"}
    assert posts == {"/v1/p", "/v1/i", "/v1/t", "/v1/g", "/v1/s", "/v1/a", "/v1/b"}, served_counts
    # analytics.js sends HTTP Basic, so each of its paths is preflighted; beacons are not.
    preflighted = {path for method, path in served_counts if method == "OPTIONS"}
    assert preflighted == posts, served_counts
    assert {line["contentType"] for line in served if line["method"] == "POST"} <= {
        "text/plain",
        "text/plain;charset=UTF-8",
    }, served
    # The unload scenario's batch and its two hand-made requests reached gunicorn.
    page_posts = Counter(urlparse(r["url"]).path for r in ours if r["method"] == "POST")
    assert served_counts[("POST", "/v1/b")] > page_posts["/v1/b"], (served_counts, page_posts)
    assert served_counts[("POST", "/v1/t")] == page_posts["/v1/t"] + 2, (served_counts, page_posts)

    sent = [event for result in log["scenarios"].values() for event in result["sent"]]
    types = Counter(event["type"] for event in sent)
    assert set(types) == {"track", "identify", "page", "screen", "group", "alias"}, types
    archived = archive_until_complete(settings, http_s3, {event["messageId"] for event in sent})
    handmade = {e["messageId"] for e in sent if "anonymousId" in e}  # the page's own posts
    assert_archived_as_sent(
        [e for e in archived if e["messageId"] not in handmade],
        [e for e in sent if e["messageId"] not in handmade],
        library="analytics.js",
    )
    assert_archived_as_sent(
        [e for e in archived if e["messageId"] in handmade],
        [e for e in sent if e["messageId"] in handmade],
    )
