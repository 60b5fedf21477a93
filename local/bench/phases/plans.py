"""Phase `plans`: the cost of a tracking plan at ingest, in process: the app with a plan of 50
events beside the same app without one, `/batch` bodies of planned events (all valid, or one in
ten violating), by the app's CPU per request and per event, against issue 27's target
(`plan_cost`)."""

from __future__ import annotations

from typing import Any

from local.bench import plan_cost, report
from local.bench.context import Bench, say

NEEDS = frozenset({"redis"})


def run(bench: Bench) -> dict[str, Any]:
    say("\n== a tracking plan's cost: in process, the app with a 50-event plan beside none")
    rows = bench.in_process(plan_cost.measure, report.plan_line, quick=300)
    return {"plans": {"planned_events": plan_cost.PLANNED_EVENTS, "rows": rows}}
