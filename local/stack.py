"""`make run`: the whole local stack in the foreground, stopped cleanly by Ctrl-C.

- Redis with local/redis.conf, its AOF under .data/redis (unless REDIS_URL is set: then that
  one), on 6379 or, if that is taken, any free port;
- an S3-compatible endpoint on loopback, moto's server on 5000 or any free port (MOTO_PORT
  chooses), with the bucket created and the archive of the previous run restored from
  .data/s3 (unless S3_ENDPOINT_URL is set: then that one, and the bucket must exist or be
  creatable);
- gunicorn serving the ingest function on BIND (127.0.0.1:8000): the public address, so if it
  is taken `make run` stops at once, saying so; while BIND is a loopback address, which no
  other machine reaches, /metrics is open (METRICS_PUBLIC) and pages of any origin may reach
  it across Chrome's Private Network Access check (PRIVATE_NETWORK_ORIGINS=*);
- the loop runner driving the consumer function;
- .data/stack.env, what a second terminal sources to reach all of it.

Processes an earlier run left behind (listed in .data/stack.pids) are stopped first.

If a part fails to start, what was started is stopped and the exit status is 1, with one line
saying which part and why. On Ctrl-C or SIGTERM, at any moment: gunicorn stops taking
requests, the runner flushes and acknowledges, the archive is saved to .data/s3, then the S3
endpoint and Redis stop (Redis fsyncs its AOF on the way out).
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from local.redis_server import RedisServer
from local.s3 import (
    FAKE_CREDENTIALS,
    ensure_bucket,
    restore_bucket,
    save_bucket,
    start_moto_server,
)
from shared.settings import ConfigError, Settings, redacted_url

ROOT = Path(__file__).resolve().parent.parent
# EVENT_INGEST_DATA_DIR moves it (the tests run stacks of their own).
DATA_DIR = Path(os.environ.get("EVENT_INGEST_DATA_DIR") or ROOT / ".data")
ENV_FILE = DATA_DIR / "stack.env"
# What the env file sets for a second terminal's commands (event-ingest, curl): the stack's own
# settings, then the ingest URL and the development key; `make up`'s local/compose.env sets the
# same names.
ENV_FILE_SETTINGS = (
    "REDIS_URL",
    "STREAM_KEY",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_PREFIX",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)
ENV_FILE_NAMES = (*ENV_FILE_SETTINGS, "INGEST_URL", "WRITE_KEY")
PIDS_FILE = DATA_DIR / "stack.pids"  # what this run started, for the next one to find
ARCHIVE_COPY = DATA_DIR / "s3"
DEV_WRITE_KEY = "dev-write-key"
# Short enough that a first-time user sees an object a few seconds after posting; a known
# write key so that the printed curl works (never use it outside your machine).
DEV_DEFAULTS = {
    "FLUSH_INTERVAL_S": "5",
    "CLAIM_IDLE_MS": "30000",
    "WRITE_KEYS": f"local:{DEV_WRITE_KEY}",
}
# Only while serving on loopback. The metrics need no token there. Private Network Access is
# asked only of a page on a less private address than ours (a deployed preview or a LAN page
# posting to this machine; a page on localhost itself never is): loopback origins would allow
# nothing, hence any origin, which unlocks only this stack.
LOOPBACK_DEFAULTS = {"METRICS_PUBLIC": "true", "PRIVATE_NETWORK_ORIGINS": "*"}


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


class StartFailure(Exception):
    """A part of the stack did not start: the message says which, and why, in a few lines."""


class Stack:
    """What `make run` started, in order; `stop` undoes it in reverse, whatever state a
    failed or interrupted start left."""

    def __init__(self, env: dict[str, str], settings: Settings) -> None:
        self.env, self.settings = env, settings
        self.stoppers: list = []
        self.saved_archive: tuple[str, str] | None = None  # (endpoint, bucket) to save on stop

    def start(self) -> None:
        env = self.env
        if "REDIS_URL" not in os.environ:
            self._start_redis()
        _check_interrupted()
        if self.settings.s3_endpoint_url is None:
            self._start_s3()
        _check_interrupted()
        os.environ.update(env)
        ensure_bucket(env.get("S3_ENDPOINT_URL"), self.settings.s3_bucket)
        if self.saved_archive:
            restored = restore_bucket(*self.saved_archive, ARCHIVE_COPY)
            if restored:
                print(f"restored {restored} archived objects from {ARCHIVE_COPY}", flush=True)
        env.setdefault("METRICS_PORT", str(free_port()))
        gunicorn = start_gunicorn(env, env["BIND"])
        _record_pid(gunicorn.pid, "gunicorn")
        self.stoppers.append(lambda: stop_process(gunicorn))
        _wait_serving(gunicorn, env["BIND"])
        _check_interrupted()
        runner = start_runner(env)
        _record_pid(runner.pid, "local.runner")
        self.stoppers.append(lambda: stop_process(runner, signal.SIGINT))
        self.children = (gunicorn, runner)
        _check_interrupted()

    def _start_redis(self) -> None:
        redis_dir = DATA_DIR / "redis"
        server = RedisServer(_free_or_other(6379), redis_dir)
        self.stoppers.append(server.stop)  # before it starts: an interrupt may come meanwhile
        try:
            server.start()
        except (RuntimeError, TimeoutError) as exc:
            server.kill()
            raise StartFailure(
                f"Redis did not start: {exc}\n{_tail(redis_dir / 'redis.log')}"
            ) from None
        _record_pid(server.process.pid, "redis-server")
        self.env["REDIS_URL"] = server.url

    def _start_s3(self) -> None:
        explicit = os.environ.get("MOTO_PORT")
        port = int(explicit) if explicit else _free_or_other(5000)
        if explicit and not port_free(port):
            raise StartFailure(
                f"MOTO_PORT {port} is in use: set MOTO_PORT to a free port, or unset it"
            )
        moto, endpoint = start_moto_server(port)
        self.stoppers.append(moto.stop)
        if not listening(port, timeout_s=10):
            raise StartFailure(f"the S3 emulator (moto) did not listen on port {port}")
        self.env.update({**FAKE_CREDENTIALS, **self.env, "S3_ENDPOINT_URL": endpoint})
        self.saved_archive = (endpoint, self.settings.s3_bucket)
        # Saved before moto stops (stoppers run in reverse): moto keeps nothing on disk.
        self.stoppers.append(self._save_archive)

    def _save_archive(self) -> None:
        saved = save_bucket(*self.saved_archive, ARCHIVE_COPY)
        print(f"saved {saved} archived objects to {ARCHIVE_COPY}", flush=True)

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            try:
                stop()
            except Exception as exc:  # stop everything else all the same
                print(f"while stopping: {exc}", file=sys.stderr)
        self.stoppers.clear()
        ENV_FILE.unlink(missing_ok=True)
        PIDS_FILE.unlink(missing_ok=True)


def main() -> int:
    # From the first moment, SIGTERM stops the stack as Ctrl-C does: nothing is left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    env = {**DEV_DEFAULTS, **os.environ}
    env.setdefault("BIND", "127.0.0.1:8000")
    if is_loopback(env["BIND"]):
        env = {**LOOPBACK_DEFAULTS, **env}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"make run: bad configuration: {exc}", file=sys.stderr)
        return 2
    _stop_leftovers()
    if not port_free(_port_of(env["BIND"])):
        print(
            f"make run: {env['BIND']} is in use (the ingest address); stop what holds it, or set"
            " BIND=127.0.0.1:PORT",
            file=sys.stderr,
        )
        return 1
    stack = Stack(env, settings)
    try:
        stack.start()
        _write_env_file(env, settings)
        _print_banner(env, settings, archive_kept=stack.saved_archive is not None)
        return _wait_for_stop(*stack.children)
    except StartFailure as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmake run: interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        # Stopping must finish (the runner flushes, the archive is saved): signals now wait.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: print("still stopping...", file=sys.stderr))
        stack.stop()


# Set by a signal during start-up. The KeyboardInterrupt raised with it can be swallowed when
# it lands in a __del__ ("Exception ignored in ..."), so start-up also checks this between parts.
_interrupted = threading.Event()


def _interrupt(*_: object) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def _check_interrupted() -> None:
    if _interrupted.is_set():
        raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on it. SO_REUSEADDR as servers bind: connections of an earlier run in
    TIME_WAIT do not make it busy."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_or_other(port: int) -> int:
    """`port` when nothing holds it, else any free one: an internal service may move."""
    return port if port_free(port) else free_port()


def _port_of(bind: str) -> int:
    return int(bind.rpartition(":")[2])


def is_loopback(bind: str) -> bool:
    """Whether `host:port` (`[::1]:port`) serves this machine only."""
    host = bind.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def listening(port: int, timeout_s: float, process: subprocess.Popen | None = None) -> bool:
    """Whether something listens on `port` within `timeout_s`; False at once if `process`,
    which should, exits meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def _wait_serving(gunicorn: subprocess.Popen, bind: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{bind}/livez"
    while time.monotonic() < deadline:
        if gunicorn.poll() is not None:
            raise StartFailure(
                f"ingest (gunicorn) exited with {gunicorn.returncode} at start; its output is above"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise StartFailure(f"ingest (gunicorn) did not answer {url} within {timeout_s:g}s")


def _stop_leftovers() -> None:
    """Processes an earlier run left behind (it was SIGKILLed: its children, in sessions of
    their own, live on) are stopped: two redis-servers must never share one AOF, and the
    ports are wanted again. Only a listed pid still running the listed program is touched."""
    try:
        listed = [line.split(maxsplit=1) for line in PIDS_FILE.read_text().splitlines()]
    except OSError:
        return
    for pid_text, program in listed:
        pid = int(pid_text)
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        if program.encode() not in command:
            continue  # the pid was reused by something else
        print(f"stopping {program} (pid {pid}), left running by an earlier run", flush=True)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    PIDS_FILE.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


def _record_pid(pid: int, program: str) -> None:
    PIDS_FILE.parent.mkdir(parents=True, exist_ok=True)
    with PIDS_FILE.open("a") as pids:
        pids.write(f"{pid} {program}\n")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join("  " + line for line in path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def _write_env_file(env: dict[str, str], settings: Settings) -> None:
    """What a second terminal needs to talk to this stack: `. .data/stack.env`."""
    env = {
        "STREAM_KEY": settings.stream_key,
        "S3_BUCKET": settings.s3_bucket,
        "S3_PREFIX": settings.s3_prefix,
        **env,
    }
    lines = [f"export {name}={shlex.quote(env[name])}" for name in ENV_FILE_SETTINGS if name in env]
    lines.append(f"export INGEST_URL={shlex.quote('http://' + env['BIND'])}")
    if env.get("WRITE_KEYS") == DEV_DEFAULTS["WRITE_KEYS"]:
        lines.append(f"export WRITE_KEY={DEV_WRITE_KEY}")
    ENV_FILE.parent.mkdir(parents=True, exist_ok=True)
    ENV_FILE.write_text("\n".join(lines) + "\n")


def _wait_for_stop(*children: subprocess.Popen) -> int:
    stop = _interrupted  # a signal that came during start-up counts too
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


def _print_banner(env: dict[str, str], settings: Settings, archive_kept: bool) -> None:
    endpoint = env.get("S3_ENDPOINT_URL")
    bind = env["BIND"]
    dev_key = env["WRITE_KEYS"] == DEV_DEFAULTS["WRITE_KEYS"]
    key = DEV_WRITE_KEY if dev_key else "<one of your WRITE_KEYS>"
    kept = f"   (kept in {ARCHIVE_COPY} between runs)" if archive_kept else ""
    if settings.metrics_token:
        scrape = "   (with METRICS_TOKEN as a bearer token)"
    elif not settings.metrics_public:
        scrape = "   (closed: set METRICS_TOKEN or METRICS_PUBLIC=true)"
    else:
        scrape = ""
    print(
        f"""
  ingest      http://{bind}   (POST /batch, /events, /v1/*; GET /livez, /readyz)
  write key   {key + "   (development key, source 'local')" if dev_key else key}
  redis       {redacted_url(env["REDIS_URL"])}   (AOF in {DATA_DIR / "redis"})
  archive     s3://{settings.s3_bucket}/{settings.s3_prefix} at {endpoint or "AWS"}{kept}
  flushes     every {settings.flush_interval_s:g}s, {settings.flush_max_events} events or \
{settings.flush_max_bytes} bytes, whichever comes first
  metrics     http://{bind}/metrics (ingest, and the stream's backlog and freshness),
              http://127.0.0.1:{env["METRICS_PORT"]}/metrics (the consumer){scrape}

  try:
    curl -i -u {key}: -X POST http://{bind}/batch -H 'Content-Type: application/json' \\
      -d '{{"batch": [{{"type": "track", "userId": "u1", "event": "Signed Up"}}]}}'
  then, after {settings.flush_interval_s:g}s, see what was archived:
    . {ENV_FILE} && .venv/bin/event-ingest query \\
      "SELECT received_at, type, event, user_id FROM events ORDER BY received_at DESC LIMIT 10"
  and how far behind the archive is:
    . {ENV_FILE} && .venv/bin/event-ingest status

  In another terminal, `. {ENV_FILE}` sets what the commands need (URLs, bucket, credentials).
  Ctrl-C stops everything, flushing the consumer first.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
