"""Phase `crowd`: a normal client's requests while idle keep-alive connections and slow
senders are open, on the gevent worker and on the previous server configuration (gthread).
Servers left up by earlier phases are reused; each is stopped after its crowd."""

from __future__ import annotations

import asyncio
from typing import Any

from local.bench import backlog, payloads, report
from local.bench.context import PREVIOUS_SERVER, PREVIOUS_SERVER_ENV, STREAM_KEY, Bench, say
from local.bench.crowd import Crowd, crowd_of, normal_requests
from local.server_limits import raise_open_files_limit

NEEDS = frozenset({"redis"})
CROWD_IDLE, CROWD_SLOW, CROWD_REQUESTS = 500, 100, 20


def run(bench: Bench) -> dict[str, Any]:
    say(
        f"\n== a normal client's {CROWD_REQUESTS} requests while {CROWD_IDLE} idle keep-alive"
        f" connections and {CROWD_SLOW} slow senders are open"
    )
    raise_open_files_limit(2 * (CROWD_IDLE + CROWD_SLOW) + 1024)  # one fd per connection
    rows = bench.results["crowd"]
    servers = [("ingest", None), (PREVIOUS_SERVER, PREVIOUS_SERVER_ENV)]
    for name, env in servers:
        port = bench.port(name) or bench.stack.start_ingest(name, env)
        backlog.empty_stream(bench.client, STREAM_KEY)
        crowd = asyncio.run(_crowd(port))
        row = _row(name, crowd)
        rows.append(row)
        say(report.crowd_line(row))
        bench.stop_server(name)
    return {"crowd": rows}


def _row(server: str, crowd: Crowd) -> dict[str, Any]:
    statuses = crowd.statuses
    return {
        "server": server,
        "idle": CROWD_IDLE,
        "idle_opened": crowd.idle_opened,
        "slow": CROWD_SLOW,
        "requests": len(statuses),
        "answered_2xx": sum(1 for s in statuses if s is not None and 200 <= s < 300),
        "median_ms": round(crowd.median_ms, 1),
        "worst_ms": round(crowd.worst_ms, 1),
        "slow_cut_after_s": sorted(round(s, 1) for s in crowd.slow_cut_after_s if s is not None)[
            -1:
        ],
    }


async def _crowd(port: int) -> Crowd:
    body = payloads.batch_bodies(10).bodies[0]
    auth = payloads.auth_headers()["Authorization"]
    async with crowd_of("127.0.0.1", port, body, auth, idle=CROWD_IDLE, slow=CROWD_SLOW) as crowd:
        await normal_requests(crowd, "127.0.0.1", port, body, auth, count=CROWD_REQUESTS)
        await crowd.all_slow_cut(timeout_s=10)
    return crowd
