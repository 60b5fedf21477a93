"""Load generators: `wrk` with a Lua script when it is installed, else an asyncio client.

Both keep HTTP/1.1 connections alive and replay prepared bodies, so the generator spends
its CPU on sockets, not on building requests. Saturation runs are closed-loop (each
connection sends its next request when the previous answer arrives). Fixed-rate runs are
open-loop and always use the asyncio client (wrk has no rate option; wrk2 is not packaged):
requests leave on a schedule, and latency counts from the scheduled time, so a stalled
server is not hidden by a client that waits for it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from local.bench.payloads import Bodies

WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
CONNECTION_LIMIT = 256


@dataclass
class LoadResult:
    tool: str
    connections: int
    duration_s: float
    requests: int
    events: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    loadgen_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def eps(self) -> float:
        return self.events / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": round(self.rps, 1), "eps": round(self.eps, 1)}


def wrk_path() -> str | None:
    return shutil.which("wrk")


def describe_loadgen(prefer: str) -> str:
    if prefer == "wrk" and wrk_path():
        return "wrk (1 thread, Lua script) for saturation; asyncio client for fixed rate"
    return "asyncio client (1 process) for saturation and fixed rate"


def saturate(
    host: str, port: int, bodies: Bodies, duration_s: float, connections: int, prefer: str
) -> LoadResult:
    if prefer == "wrk" and wrk_path():
        return _run_wrk(host, port, bodies, duration_s, connections)
    return asyncio.run(_saturate(host, port, bodies, duration_s, connections))


# --- wrk ----------------------------------------------------------------------------------------


def _run_wrk(
    host: str, port: int, bodies: Bodies, duration_s: float, connections: int
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        files = []
        for index, body in enumerate(bodies.bodies):
            path = Path(tmp) / f"body-{index}"
            path.write_bytes(body)
            files.append(str(path))
        spec = Path(tmp) / "spec"
        header_lines = [f"{name}: {value}" for name, value in bodies.headers.items()]
        spec.write_text("\n".join([bodies.path, *header_lines, "", *files]) + "\n")
        out = Path(tmp) / "out"
        args = [wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(duration_s))}s"]
        args += [
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            f"http://{host}:{port}",
            "--",
            str(spec),
        ]
        with out.open("wb") as sink:
            process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        text = out.read_text()
    line = next((ln for ln in text.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text[-2000:]}")
    figures = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(figures[k] for k in figures if k.endswith("_errors") or k == "timeouts")
    requests = figures["requests"]
    return LoadResult(
        tool="wrk",
        connections=connections,
        duration_s=figures["duration_us"] / 1e6,
        requests=requests,
        events=(requests - figures["status_errors"]) * bodies.events_per_request,
        errors=errors,
        p50_ms=figures["p50_us"] / 1000,
        p99_ms=figures["p99_us"] / 1000,
        max_ms=figures["max_us"] / 1000,
        statuses={"non-2xx/3xx": figures["status_errors"]} if figures["status_errors"] else {},
        loadgen_cpu_s=usage.ru_utime + usage.ru_stime,
    )


# --- asyncio client -----------------------------------------------------------------------------


def build_requests(host: str, port: int, bodies: Bodies) -> list[bytes]:
    head = f"POST {bodies.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in bodies.headers.items())
    return [(head + f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies.bodies]


class _Connection:
    """One keep-alive HTTP/1.1 connection; answers must carry a Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive)"""
        self.writer.write(request)
        head = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        status = int(head[9:12])
        start = head.find(b"\r\ncontent-length:")
        length = int(head[start + 17 : head.index(b"\r\n", start + 2)]) if start >= 0 else 0
        body = await self.reader.readexactly(length) if length else b""
        return status, body, b"\r\nconnection: close" not in head

    def close(self) -> None:
        self.writer.close()


def _percentiles(latencies: list[float]) -> tuple[float, float, float]:
    if not latencies:
        return 0.0, 0.0, 0.0
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return at(0.50), at(0.99), ordered[-1] * 1000


class _Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.errors = 0
        self.ok = 0

    def record(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
        if 200 <= status < 300:
            self.ok += 1
        else:
            self.errors += 1

    def result(self, connections: int, duration: float, events_per_request: int, cpu: float):
        p50, p99, worst = _percentiles(self.latencies)
        return LoadResult(
            tool="asyncio",
            connections=connections,
            duration_s=duration,
            requests=len(self.latencies),
            events=self.ok * events_per_request,
            errors=self.errors,
            p50_ms=p50,
            p99_ms=p99,
            max_ms=worst,
            statuses=self.statuses,
            loadgen_cpu_s=cpu,
        )


async def _saturate(
    host: str, port: int, bodies: Bodies, duration_s: float, connections: int
) -> LoadResult:
    requests = build_requests(host, port, bodies)
    tally = _Tally()
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker(offset: int) -> None:
        conn = await _Connection.open(host, port)
        index = offset
        while (now := time.perf_counter()) < deadline:
            try:
                status, _, alive = await conn.send(requests[index % len(requests)])
            except (OSError, asyncio.IncompleteReadError, ValueError):
                tally.errors += 1
                conn.close()
                conn = await _Connection.open(host, port)
                continue
            tally.record(status, time.perf_counter() - now)
            index += 1
            if not alive:
                conn.close()
                conn = await _Connection.open(host, port)
        conn.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return tally.result(connections, elapsed, bodies.events_per_request, cpu)


OnDone = Callable[[int, int, float], None]


def fixed_rate(
    host: str,
    port: int,
    bodies: Bodies,
    rate_rps: float,
    duration_s: float,
    requests: list[bytes] | None = None,
    on_done: OnDone | None = None,
) -> LoadResult:
    """Send `rate_rps` requests a second for `duration_s`; `on_done(index, status, t)` is
    called with `time.monotonic()` when each answer arrives."""
    requests = requests or build_requests(host, port, bodies)
    return asyncio.run(_fixed_rate(host, port, bodies, requests, rate_rps, duration_s, on_done))


async def _fixed_rate(
    host: str,
    port: int,
    bodies: Bodies,
    requests: list[bytes],
    rate_rps: float,
    duration_s: float,
    on_done: OnDone | None,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    tally = _Tally()
    idle: list[_Connection] = []
    opened = 0
    pending: set[asyncio.Task] = set()

    async def one(index: int, due: float) -> None:
        nonlocal opened
        if idle:
            conn = idle.pop()
        else:
            opened += 1
            conn = await _Connection.open(host, port)
        try:
            status, _, alive = await conn.send(requests[index % len(requests)])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            tally.errors += 1
            conn.close()
            return
        done = loop.time()
        tally.record(status, done - due)
        if on_done:
            on_done(index, status, time.monotonic())
        if alive and len(idle) < CONNECTION_LIMIT:
            idle.append(conn)
        else:
            conn.close()

    cpu0 = time.process_time()
    total = int(rate_rps * duration_s)
    start = loop.time() + 0.01
    for index in range(total):
        due = start + index / rate_rps
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(index, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    elapsed = loop.time() - start
    for conn in idle:
        conn.close()
    cpu = time.process_time() - cpu0
    return tally.result(opened, elapsed, bodies.events_per_request, cpu)
