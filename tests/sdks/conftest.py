"""Fixtures for the real-SDK tests: a Node.js install of the JS SDKs (one per machine), running
a Node script, the analytics.js page and Chromium for the browser tests, reading what the stream
holds, and waiting for the archive to hold what an SDK sent.

The JS packages are pinned by `js/package-lock.json`. They are installed once per machine into
`${XDG_CACHE_HOME:-~/.cache}/event-ingest/npm/<hash of the lockfile>` with `npm ci`, and every
later session reuses that directory. Scripts under `js/` find them through NODE_PATH (they are
CommonJS), so nothing is ever installed into the work tree.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from local import stack
from local.stack import stop_process
from shared import codec
from shared.settings import Settings
from shared.shards import shard_keys
from tests.conftest import archived_events, settings_env

JS_DIR = Path(__file__).resolve().parent / "js"
BROWSER_DIR = JS_DIR / "browser"
CHROMIUM = "/usr/bin/chromium"
LOCKFILE = JS_DIR / "package-lock.json"
NODE_MIN_MAJOR = 20  # @segment/analytics-node and playwright-core need it
NPM_CI_TIMEOUT_S = 240
RESULT_PREFIX = "RESULT "  # the line a script's JSON result is on; SDKs may log to stdout

# The write keys every SDK test uses, and the source each is archived under.
WRITE_KEY = "wk_sdk_test_0123456789"
SOURCE = "backend"
OTHER_WRITE_KEY = "wk_other"


@dataclasses.dataclass(frozen=True)
class NodeEnv:
    node: str
    root: Path  # the install: package.json, package-lock.json, node_modules/

    @property
    def node_modules(self) -> Path:
        return self.root / "node_modules"

    def environ(self) -> dict[str, str]:
        return {**os.environ, "NODE_PATH": str(self.node_modules), "NO_COLOR": "1"}

    def run(
        self, script: str | Path, config: dict[str, Any], timeout_s: float = 60
    ) -> dict[str, Any]:
        """Run `js/<script>` with `config` as its JSON argument; the JSON result it printed."""
        path = JS_DIR / script
        try:
            done = subprocess.run(
                [self.node, str(path), json.dumps(config)],
                cwd=JS_DIR,
                env=self.environ(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{script} ran over {timeout_s}s; stderr:\n{_tail(exc.stderr)}")
        results = [
            line[len(RESULT_PREFIX) :]
            for line in done.stdout.splitlines()
            if line.startswith(RESULT_PREFIX)
        ]
        if done.returncode != 0 or len(results) != 1:
            pytest.fail(
                f"{script} exited with {done.returncode} and {len(results)} result lines\n"
                f"stdout:\n{_tail(done.stdout)}\nstderr:\n{_tail(done.stderr)}"
            )
        return json.loads(results[0])


def _tail(text: str | bytes | None, limit: int = 6000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-limit:]


def npm_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "event-ingest" / "npm"


def _node_major(node: str) -> int:
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    return int(version.stdout.strip().lstrip("v").split(".")[0])


@pytest.fixture(scope="session")
def node_env() -> NodeEnv:
    """The pinned JS SDKs, installed with `npm ci` the first time this machine needs them."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("the JS SDK tests need node and npm on PATH (Debian: apt-get install npm)")
    if (major := _node_major(node)) < NODE_MIN_MAJOR:
        pytest.skip(f"the JS SDK tests need Node.js {NODE_MIN_MAJOR}+, found {major}")

    digest = hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()[:16]
    root = npm_cache_root() / digest
    if not (root / ".installed").exists():
        _npm_ci(npm, root)
    return NodeEnv(node=node, root=root)


def _npm_ci(npm: str, root: Path) -> None:
    """Install into a fresh directory and rename it into place: a concurrent or interrupted
    install never leaves a half-filled `root` behind."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f"{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    staging.mkdir()
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(JS_DIR / name, staging / name)
        # --ignore-scripts: no install script is needed (esbuild finds its binary in its
        # optional @esbuild/<platform> package; bull's native msgpack extract is unused).
        args = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        env = {**os.environ, "npm_config_update_notifier": "false"}
        try:
            done = subprocess.run(
                args, cwd=staging, env=env, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci took over {NPM_CI_TIMEOUT_S}s in {staging}")
        if done.returncode != 0:
            pytest.fail(f"npm ci failed ({done.returncode}) in {staging}:\n{_tail(done.stderr)}")
        (staging / ".installed").write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
        try:
            staging.rename(root)
        except OSError:
            if not (root / ".installed").exists():  # not another session's finished install
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def analytics_bundle(node_env: NodeEnv) -> Path:
    """analytics-next as one IIFE file, built by esbuild into the npm install's cache directory
    once per version of the entry file (so at most once per session)."""
    entry = BROWSER_DIR / "entry.js"
    options = ["--bundle", "--format=iife", "--platform=browser", "--target=es2020"]
    digest = hashlib.sha256(entry.read_bytes() + " ".join(options).encode()).hexdigest()[:12]
    bundle = node_env.root / "bundles" / f"analytics-next-{digest}.js"
    if bundle.exists():
        return bundle
    bundle.parent.mkdir(exist_ok=True)
    staging = bundle.with_name(f"{bundle.name}.tmp-{os.getpid()}")
    esbuild = node_env.node_modules / "esbuild" / "bin" / "esbuild"
    args = [node_env.node, str(esbuild), str(entry), *options, f"--outfile={staging}"]
    args.append("--log-level=warning")
    done = subprocess.run(args, env=node_env.environ(), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"esbuild failed ({done.returncode}):\n{done.stderr[-4000:]}")
    staging.replace(bundle)
    return bundle


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def page_origin(analytics_bundle: Path, tmp_path: Path) -> Iterator[str]:
    """page.html, page.js and the bundle, served from another port than gunicorn's."""
    root = tmp_path / "site"
    root.mkdir()
    for name in ("page.html", "page.js"):
        shutil.copy(BROWSER_DIR / name, root / name)
    shutil.copy(analytics_bundle, root / "analytics-next.js")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"the browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture
def settings(settings: Settings, moto_endpoint: str) -> Settings:
    return dataclasses.replace(
        settings,
        s3_endpoint_url=moto_endpoint,
        write_keys=((SOURCE, WRITE_KEY), ("other", OTHER_WRITE_KEY)),
        flush_max_events=5000,
    )


def streamed_events(redis_client: redis.Redis, settings: Settings) -> list[dict[str, Any]]:
    """Every event the stream holds (every shard), as ingest stored it."""
    return [
        event
        for key in shard_keys(settings.stream_key, settings.stream_shards)
        for _, fields in redis_client.xrange(key)
        for event in codec.decode_entry(fields)
    ]


def archive_until_complete(
    settings: Settings, http_s3: Any, message_ids: set[str], timeout_s: float = 60
) -> list[dict[str, Any]]:
    """Run the consumer until every one of `message_ids` is archived; every archived event.

    The runner is stopped (it flushes what it holds) before the archive is read a last time,
    so duplicates or strays written after the last expected event are seen too."""
    runner = stack.start_runner(settings_env(settings))
    missing: set[str] = set(message_ids)
    try:
        deadline = time.monotonic() + timeout_s
        while missing and time.monotonic() < deadline:
            time.sleep(0.5)
            found = {e.get("messageId") for e in archived_events(http_s3, settings.s3_bucket)}
            missing = message_ids - found
    finally:
        assert stop_process(runner) == 0
    archived = archived_events(http_s3, settings.s3_bucket)
    missing = message_ids - {e.get("messageId") for e in archived}
    assert not missing, (
        f"{len(missing)} of {len(message_ids)} events not archived after {timeout_s}s, "
        f"e.g. {sorted(missing)[:5]}"
    )
    return archived


def assert_archived_as_sent(
    archived: list[dict[str, Any]], sent: list[dict[str, Any]], library: str | None = None
) -> None:
    """Exactly the sent events, each once, with the write key's source and the key nowhere;
    every Segment Spec field the script passed arrives unchanged."""
    by_id: dict[str, dict[str, Any]] = {}
    for event in archived:
        assert event["messageId"] not in by_id, f"archived twice: {event['messageId']}"
        by_id[event["messageId"]] = event
    assert by_id.keys() == {e["messageId"] for e in sent}, "the archive holds other events"
    for expected in sent:
        event = by_id[expected["messageId"]]
        assert event["source"] == SOURCE, event
        assert "writeKey" not in event, event
        assert WRITE_KEY not in json.dumps(event), event
        assert event["receivedAt"].endswith("Z") and event["timestamp"].endswith("Z"), event
        if library is not None:
            assert event["context"]["library"]["name"] == library, event
        for field, value in expected.items():
            if field in ("timestamp", "context"):
                continue  # stamped or merged by the server / SDK
            assert event.get(field) == value, (field, value, event)
