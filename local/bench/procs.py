"""The processes of a benchmark run, on loopback: redis-server, moto's S3 server, gunicorn
(the ingest function and the baselines) and loop runners, each started the way `make run`
starts it (local.redis_server, local.s3, local.stack), and all stopped at the end.

moto runs in a child process of its own (`python -m local.bench.procs s3 PORT`), so its CPU is
counted apart and does not compete with the load generator for one interpreter lock.
Children's output goes to log files in the run's folder, not into the table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from local import stack
from local.bench import cpu
from local.redis_cluster import LocalCluster, free_ports
from local.redis_server import RedisServer
from local.s3 import FAKE_CREDENTIALS, ensure_bucket, start_moto_server
from local.stack import free_port, listening
from local.stack import stop_process as stop

ROOT = Path(__file__).resolve().parents[2]
GUNICORN_CONF = ROOT / "local" / "gunicorn.conf.py"


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Children started inside inherit stdout and stderr pointing at `path`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def wait_listening(port: int, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    if listening(port, timeout_s, process):
        return
    if process.poll() is not None:
        raise RuntimeError(f"{process.args} exited with {process.returncode} at start")
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s}s")


class Stack:
    """Everything a run starts; `close` stops it all, in reverse order."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.run_dir = run_dir
        self.env = {**os.environ, **FAKE_CREDENTIALS, **env}
        self.redis: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.cluster: LocalCluster | None = None
        self.s3: subprocess.Popen | None = None
        self.servers: dict[str, tuple[subprocess.Popen, int]] = {}
        self._stoppers: list = []

    # --- storage ---------------------------------------------------------------------------

    def start_storage(self, bucket: str) -> None:
        self.start_redis()
        self.start_s3(bucket)

    def start_redis(self) -> None:
        self.redis = RedisServer(free_port(), self.run_dir / "redis").start()
        self._stoppers.append(self.redis.stop)
        self.env["REDIS_URL"] = self.redis.url

    def start_s3(self, bucket: str) -> None:
        """moto's S3 server in a child process, with `bucket` made."""
        port = free_port()
        with output_to(self.run_dir / "s3.log"):
            self.s3 = subprocess.Popen(
                [sys.executable, "-m", "local.bench.procs", "s3", str(port)],
                cwd=ROOT,
                env=self.env,
                start_new_session=True,
            )
        self._stoppers.append(lambda: stop(self.s3))
        wait_listening(port, self.s3)
        endpoint = f"http://127.0.0.1:{port}"
        self.env["S3_ENDPOINT_URL"] = endpoint
        os.environ.update(FAKE_CREDENTIALS)
        ensure_bucket(endpoint, bucket)

    def start_replica(self) -> None:
        """A replica of the stack's Redis, on loopback (its CPU is counted as Redis's)."""
        args = ("--replicaof", "127.0.0.1", str(self.redis.port))
        self.replica = RedisServer(free_port(), self.run_dir / "replica", *args)
        self._stoppers.append(self.replica.stop)
        self.replica.start().wait_replicating()

    def start_cluster(self, primaries: int) -> LocalCluster:
        """A Redis Cluster of `primaries` primaries on loopback (its CPU is counted as Redis's)."""
        self.cluster = LocalCluster(free_ports(primaries), self.run_dir / "cluster", primaries)
        self._stoppers.append(self.cluster.kill)
        return self.cluster.start()

    # --- HTTP servers ----------------------------------------------------------------------

    def start_ingest(self, name: str = "ingest", env: dict[str, str] | None = None) -> int:
        """The ingest function, started as `make run` starts it (with `env` on top)."""
        port = free_port()
        with output_to(self.run_dir / f"gunicorn-{name}.log"):
            process = stack.start_gunicorn({**self.env, **(env or {})}, f"127.0.0.1:{port}")
        return self._serving(name, process, port)

    def start_baseline(self, name: str, app: str, env: dict[str, str] | None = None) -> int:
        """Another WSGI app under the same gunicorn settings (local/gunicorn.conf.py), with
        `env` on top of the stack's."""
        port = free_port()
        args = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), app]
        with output_to(self.run_dir / f"gunicorn-{name}.log"):
            process = subprocess.Popen(
                args,
                cwd=ROOT,
                env={**self.env, **(env or {}), "BIND": f"127.0.0.1:{port}"},
                start_new_session=True,
            )
        return self._serving(name, process, port)

    def _serving(self, name: str, process: subprocess.Popen, port: int) -> int:
        self.servers[name] = (process, port)
        self._stoppers.append(lambda: stop(process))
        wait_listening(port, process)
        # Workers boot after the master listens; wait until one answers.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except urllib.error.HTTPError:
                break  # an answer, even 404/405, means a worker is up
            except OSError:
                time.sleep(0.1)
        return port

    # --- consumers -------------------------------------------------------------------------

    def start_runners(
        self, count: int, env: dict[str, str], log_name: str
    ) -> list[subprocess.Popen]:
        """`count` loop runners (consumer processes), as `make run` starts one."""
        runners = []
        with output_to(self.run_dir / f"{log_name}.log"):
            for _ in range(count):
                runner = stack.start_runner({**self.env, **env}, "--budget-s", "600")
                runners.append(runner)
                # SIGINT: the runner flushes, acknowledges and exits (a no-op once it has).
                self._stoppers.append(lambda runner=runner: stop(runner, signal.SIGINT))
        return runners

    # --- CPU accounting --------------------------------------------------------------------

    def server_pids(self, name: str) -> list[int]:
        process, _ = self.servers[name]
        return cpu.tree(process.pid)

    def redis_pids(self) -> list[int]:
        servers = [self.redis, self.replica, *(self.cluster.servers if self.cluster else [])]
        return [server.process.pid for server in servers if server and server.process]

    def s3_pids(self) -> list[int]:
        return [self.s3.pid] if self.s3 else []

    def close(self) -> None:
        for stopper in reversed(self._stoppers):
            with contextlib.suppress(Exception):
                stopper()
        self._stoppers.clear()


def _serve_s3(port: int) -> None:
    server, endpoint = start_moto_server(port)
    print(f"moto S3 at {endpoint}", flush=True)
    stopped = False

    def on_signal(*_: object) -> None:
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopped:
        time.sleep(0.2)
    server.stop()


if __name__ == "__main__":
    if sys.argv[1:2] == ["s3"]:
        _serve_s3(int(sys.argv[2]))
