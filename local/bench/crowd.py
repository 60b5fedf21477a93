"""Ordinary crowded traffic: many idle keep-alive connections and slow senders, while a normal
client sends requests. The connection test and `make bench` use the same crowd.

- An idle connection sends one request, reads its answer and keeps the connection open, as a
  browser or an SDK's HTTP client does between events.
- A slow connection sends its request headers one line a second (a mobile client on a bad
  network, or slowloris), and never finishes them unless the server waits that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

# How long an idle connection's first request may take before it counts as not opened.
OPEN_TIMEOUT_S = 10.0


@dataclass
class Crowd:
    """What the crowd saw: the normal client's answers and how the server treated the rest."""

    idle_opened: int = 0
    slow_opened: int = 0
    # Seconds each slow sender was connected before the server closed it (None: never closed).
    slow_cut_after_s: list[float | None] = field(default_factory=list)
    statuses: list[int | None] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)

    async def all_slow_cut(self, timeout_s: float) -> bool:
        """Wait until the server has closed every slow sender; False if some outlast
        `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while None in self.slow_cut_after_s and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return None not in self.slow_cut_after_s

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1000 if self.latencies_s else float("nan")

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_s) * 1000 if self.latencies_s else float("nan")


async def _request_bytes(host: str, port: int, path: str, body: bytes, auth: str | None) -> bytes:
    headers = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if auth:
        headers.append(f"Authorization: {auth}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


async def _read_answer(reader: asyncio.StreamReader) -> int:
    """The status of one HTTP/1.1 answer, its body read so the connection can be reused."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed before answering")
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _idle(host: str, port: int, request: bytes, crowd: Crowd, held: list) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    held.append(writer)
    writer.write(request)
    await writer.drain()
    await asyncio.wait_for(_read_answer(reader), OPEN_TIMEOUT_S)
    crowd.idle_opened += 1


async def _slow(host: str, port: int, request: bytes, crowd: Crowd, held: list) -> None:
    """Send the headers a line a second; note when the server hangs up."""
    reader, writer = await asyncio.open_connection(host, port)
    held.append(writer)
    crowd.slow_opened += 1
    opened = time.monotonic()
    slot = len(crowd.slow_cut_after_s)
    crowd.slow_cut_after_s.append(None)
    head = request.split(b"\r\n\r\n")[0].split(b"\r\n")
    try:
        for line in head:
            writer.write(line + b"\r\n")
            await writer.drain()
            if await _closed_within(reader, 1.0):
                break
        while not await _closed_within(reader, 1.0):  # the blank line never comes
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    crowd.slow_cut_after_s[slot] = time.monotonic() - opened


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server closed (or answered: it closes right after) within `seconds`."""
    try:
        data = await asyncio.wait_for(reader.read(4096), seconds)
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/")


@contextlib.asynccontextmanager
async def crowd_of(
    host: str,
    port: int,
    body: bytes,
    auth: str | None = None,
    idle: int = 500,
    slow: int = 100,
    path: str = "/batch",
) -> AsyncIterator[Crowd]:
    """Open `idle` keep-alive connections (each after one answered request) and `slow` slow
    senders, and keep them until the block ends."""
    crowd, held = Crowd(), []
    request = await _request_bytes(host, port, path, body, auth)
    idlers = [_idle(host, port, request, crowd, held) for _ in range(idle)]
    # Opened in waves: a real crowd does not arrive in one millisecond either.
    for start in range(0, len(idlers), 100):
        await asyncio.gather(*idlers[start : start + 100], return_exceptions=True)
    slow_tasks = [asyncio.create_task(_slow(host, port, request, crowd, held)) for _ in range(slow)]
    await asyncio.sleep(1.0)  # the slow senders are now mid-headers
    try:
        yield crowd
    finally:
        for task in slow_tasks:
            task.cancel()
        await asyncio.gather(*slow_tasks, return_exceptions=True)
        for writer in held:
            writer.close()


async def normal_requests(
    crowd: Crowd,
    host: str,
    port: int,
    body: bytes,
    auth: str | None = None,
    count: int = 20,
    timeout_s: float = 5.0,
    path: str = "/batch",
) -> None:
    """`count` requests from a normal client, one at a time, each on a new connection; a
    request with no answer within `timeout_s` counts as status None."""
    request = await _request_bytes(host, port, path, body, auth)
    for _ in range(count):
        started = time.monotonic()
        try:
            status = await asyncio.wait_for(_one(host, port, request), timeout_s)
        except (TimeoutError, ConnectionError, OSError):
            status = None
        crowd.statuses.append(status)
        crowd.latencies_s.append(time.monotonic() - started)


async def _one(host: str, port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await _read_answer(reader)
    finally:
        writer.close()
