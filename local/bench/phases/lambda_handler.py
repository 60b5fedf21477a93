"""Phase `lambda-handler`: the ingest function's Lambda handler in process, warm, as issue 29
asks it reported before and after: the wall time of an invocation with an API Gateway event of
100 events and of one, through the deployed entry point (`lambda_handler_cost`)."""

from __future__ import annotations

from typing import Any

from local.bench import lambda_handler_cost, report
from local.bench.context import Bench, say

NEEDS = frozenset({"redis"})


def run(bench: Bench) -> dict[str, Any]:
    say("\n== the Lambda handler, warm, in process: an API Gateway event's invocation")
    rows = bench.in_process(lambda_handler_cost.measure, report.lambda_handler_line, quick=300)
    return {"lambda_handler": rows}
