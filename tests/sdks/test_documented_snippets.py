"""The server snippets of docs/sdks.md work as printed: each is read from the page, given the
URL of a gunicorn-served ingest function and a write key in place of its placeholders, and run
as a reader would run it (Python with this venv's interpreter, Node.js as an ES module with the
pinned SDK); the event it sends must then be in the stream, with the fields it documents, under
the key's source. The analytics.js snippet is run by test_browser_sdk.py, in Chromium."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.settings import Settings
from tests.sdks import documented
from tests.sdks.conftest import SOURCE, WRITE_KEY, NodeEnv, streamed_events

# The first test to use node_env may pay for `npm ci` (a few seconds with a warm registry).
pytestmark = pytest.mark.timeout(300)
# What each snippet's `track` call sends.
DOCUMENTED = {"type": "track", "userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}}
# A snippet that delivers does so in a second or two; one pointed elsewhere retries for longer.
SNIPPET_TIMEOUT_S = 90


def run_snippet(args: list[str], **options: Any) -> None:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT_S, **options
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the snippet ran over {SNIPPET_TIMEOUT_S}s; stderr:\n{exc.stderr!r}")
    assert done.returncode == 0, (
        f"the snippet exited with {done.returncode}\n"
        f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    )


def assert_documented_event_stored(
    redis_client: redis.Redis, settings: Settings, library: str
) -> None:
    events = streamed_events(redis_client, settings)
    assert len(events) == 1, f"the stream holds {len(events)} events, not the snippet's one"
    event = events[0]
    for field, value in DOCUMENTED.items():
        assert event.get(field) == value, (field, value, event)
    assert event["source"] == SOURCE, event
    assert event["context"]["library"]["name"] == library, event
    assert "writeKey" not in event, event


def test_python_snippet_delivers_its_event(
    settings: Settings, gunicorn_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    code = documented.snippet("python", "segment.analytics")
    script = tmp_path / "snippet.py"
    script.write_text(documented.for_server(code, gunicorn_url, WRITE_KEY))
    # This venv's interpreter: the one segment-analytics-python is installed in.
    run_snippet([sys.executable, str(script)], cwd=tmp_path)
    assert_documented_event_stored(redis_client, settings, "analytics-python")


def test_node_snippet_delivers_its_event(
    node_env: NodeEnv,
    settings: Settings,
    gunicorn_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    code = documented.snippet("js", "@segment/analytics-node")
    # An ES module (top-level await), which NODE_PATH does not reach: it finds its packages in
    # the node_modules beside it, a link to the cached install.
    (tmp_path / "node_modules").symlink_to(node_env.node_modules, target_is_directory=True)
    script = tmp_path / "snippet.mjs"
    script.write_text(documented.for_server(code, gunicorn_url, WRITE_KEY))
    run_snippet([node_env.node, str(script)], cwd=tmp_path, env=node_env.environ())
    assert_documented_event_stored(redis_client, settings, "@segment/analytics-node")
