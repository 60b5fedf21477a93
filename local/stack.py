"""`make run`: the whole local stack in the foreground, stopped cleanly by Ctrl-C.

- Redis with local/redis.conf, its AOF under .data/redis (unless REDIS_URL is set: then that one);
- an S3-compatible endpoint on loopback, moto's server with the bucket created (unless
  S3_ENDPOINT_URL is set: then that one, and the bucket must exist or be creatable);
- gunicorn serving the ingest function on 127.0.0.1:8000;
- the loop runner driving the consumer function.

On Ctrl-C or SIGTERM: gunicorn stops taking requests, the runner flushes and acknowledges,
then the S3 endpoint and Redis stop (Redis fsyncs its AOF on the way out).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from local.redis_server import RedisServer
from local.s3 import FAKE_CREDENTIALS, ensure_bucket, start_moto_server
from shared.settings import ConfigError, Settings, redacted_url

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / ".data"
INGEST_BIND = os.environ.get("BIND", "127.0.0.1:8000")
MOTO_PORT = int(os.environ.get("MOTO_PORT", "5000"))
DEV_WRITE_KEY = "dev-write-key"
# Short enough that a first-time user sees an object a few seconds after posting; a known
# write key so that the printed curl works (never use it outside your machine).
DEV_DEFAULTS = {
    "FLUSH_INTERVAL_S": "5",
    "CLAIM_IDLE_MS": "30000",
    "WRITE_KEYS": f"local:{DEV_WRITE_KEY}",
}


def start_gunicorn(env: dict[str, str], bind: str) -> subprocess.Popen:
    """The ingest function as production serves it."""
    args = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "local" / "gunicorn.conf.py")]
    args.append("functions.ingest.app:app")
    # Its own session: a terminal's Ctrl-C reaches only this stack, which stops it gracefully.
    return subprocess.Popen(args, cwd=ROOT, env={**env, "BIND": bind}, start_new_session=True)


def start_runner(env: dict[str, str], *args: str) -> subprocess.Popen:
    """The consumer function, driven by the loop runner."""
    return subprocess.Popen(
        [sys.executable, "-m", "local.runner", *args],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )


def main() -> int:
    env = {**DEV_DEFAULTS, **os.environ}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"bad configuration: {exc}", file=sys.stderr)
        return 2

    stoppers: list = []
    try:
        if "REDIS_URL" not in os.environ:
            port = urlparse(settings.redis_url).port or 6379
            redis_server = RedisServer(port, DATA_DIR / "redis").start()
            stoppers.append(redis_server.stop)
        if settings.s3_endpoint_url is None:
            moto, endpoint = start_moto_server(MOTO_PORT)
            stoppers.append(moto.stop)
            env.update({**FAKE_CREDENTIALS, **env, "S3_ENDPOINT_URL": endpoint})
        os.environ.update(env)
        ensure_bucket(env.get("S3_ENDPOINT_URL"), settings.s3_bucket)

        env.setdefault("METRICS_PORT", str(_free_port()))
        gunicorn = start_gunicorn(env, INGEST_BIND)
        runner = start_runner(env)
        stoppers += [lambda: stop_process(runner, signal.SIGINT), lambda: stop_process(gunicorn)]
        _print_banner(env, settings)
        return _wait_for_stop(gunicorn, runner)
    finally:
        for stop in reversed(stoppers):
            stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_stop(*children: subprocess.Popen) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.5):
        for child in children:
            if child.poll() is not None:
                print(f"{child.args} exited with {child.returncode}; stopping", file=sys.stderr)
                return 1
    print("\nstopping: ingest first, then the consumer flushes, then storage and Redis")
    return 0


def stop_process(
    process: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 60
) -> int:
    """Ask a child to stop (SIGTERM: gunicorn finishes its requests; SIGINT or SIGTERM: the
    runner flushes), kill it if it takes longer than `timeout_s`; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def _print_banner(env: dict[str, str], settings: Settings) -> None:
    endpoint = env.get("S3_ENDPOINT_URL")
    dev_key = env["WRITE_KEYS"] == DEV_DEFAULTS["WRITE_KEYS"]
    key = DEV_WRITE_KEY if dev_key else "<one of your WRITE_KEYS>"
    print(
        f"""
  ingest      http://{INGEST_BIND}   (POST /batch, /events, /v1/*; GET /livez, /readyz)
  write key   {key + "   (development key, source 'local')" if dev_key else key}
  redis       {redacted_url(settings.redis_url)}   (AOF in {DATA_DIR / "redis"})
  archive     s3://{settings.s3_bucket}/{settings.s3_prefix} at {endpoint or "AWS"}
  flushes     every {settings.flush_interval_s:g}s, {settings.flush_max_events} events or \
{settings.flush_max_bytes} bytes, whichever comes first
  metrics     http://{INGEST_BIND}/metrics (ingest, and the stream's backlog and freshness),
              http://127.0.0.1:{env["METRICS_PORT"]}/metrics (the consumer)
  status      .venv/bin/event-ingest status

  try:
    curl -i -u {key}: -X POST http://{INGEST_BIND}/batch -H 'Content-Type: application/json' \\
      -d '{{"batch": [{{"type": "track", "userId": "u1", "event": "Signed Up"}}]}}'
  then, after {settings.flush_interval_s:g}s, list the archive:
    curl -s '{endpoint or "https://s3.amazonaws.com"}/{settings.s3_bucket}?list-type=2'

  Ctrl-C stops everything, flushing the consumer first.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
