"""Phase `rate-limits`: the cost of the rate limits, in process: the app without limits beside
the app with a source and an address limit, by the app's CPU and Redis's script time, per
request and per event (`rate_limit_cost`)."""

from __future__ import annotations

from typing import Any

from local.bench import rate_limit_cost, report
from local.bench.context import STREAM_KEY, Bench, say

NEEDS = frozenset({"redis"})


def run(bench: Bench) -> dict[str, Any]:
    say("\n== the rate limits' cost: in process, no limits beside a source and an address")
    requests = 2000 if bench.plan.repeat > 1 else 500
    rows = rate_limit_cost.measure(bench.stack.env["REDIS_URL"], STREAM_KEY, requests)
    for row in rows:
        say(report.rate_limits_line(row))
    return {"rate_limits": rows}
