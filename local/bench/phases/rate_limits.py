"""Phase `rate-limits`: the cost of the rate limits, in process: the app without limits beside
the app with a source and an address limit, by the app's CPU and Redis's script time, per
request and per event (`rate_limit_cost`)."""

from __future__ import annotations

from typing import Any

from local.bench import rate_limit_cost, report
from local.bench.context import Bench, say

NEEDS = frozenset({"redis"})


def run(bench: Bench) -> dict[str, Any]:
    say("\n== the rate limits' cost: in process, no limits beside a source and an address")
    rows = bench.in_process(rate_limit_cost.measure, report.rate_limits_line, quick=500)
    return {"rate_limits": rows}
