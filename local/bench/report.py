"""What a run prints and keeps: one line per measurement as it happens, the full table with
the targets of issue 6 at the end, the figures as JSON (`results-<UTC time>.json`) and a
small SVG bar chart beside it, so runs can be compared."""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = {
    "batch_eps": 100_000,
    "segment_eps": 80_000,
    "p99_ms_at_1000": 10.0,
    "drain_eps_1": 200_000,
    "memory_ratio": 1.5,
}


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cores(cores: dict[str, float], names: tuple[str, ...]) -> str:
    return "/".join(f"{cores.get(name, 0.0):.2f}" for name in names)


SAT_CORES = ("server", "redis", "loadgen", "s3", "other")
RATE_CORES = ("server", "redis", "bench", "other")
DRAIN_CORES = ("consumers", "redis", "s3", "other")


def ingest_line(row: dict) -> str:
    if not row.get("available", True):
        return f"  {row['scenario']:46} not available: {row['why']}"
    errors = f"{row['errors']} err" if row["errors"] else ""
    runs = row.get("runs_eps", [])
    spread = f" [{_n(min(runs))}..{_n(max(runs))}]" if len(runs) > 1 else ""
    per_request = row.get("server_cpu_us_per_request")
    per_event = per_request / row["events_per_request"] if per_request else None
    return (
        f"  {row['scenario']:46} {_n(row['eps']):>9} ev/s {_n(row['rps']):>7} req/s"
        f"  p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:7.2f}  max {row['max_ms']:7.1f} ms"
        f"  cpu {_n(per_request):>6} us/req {_n(per_event, 1):>6} us/ev"
        f"  cores {_cores(row['cores'], SAT_CORES)}{_workers(row)}{spread} {errors}"
    )


def _workers(row: dict) -> str:
    split = row.get("worker_cores") or []
    if len(split) < 2:
        return ""
    flag = " IMBALANCED" if split[-1] < 0.25 * split[0] else ""
    return f" workers {'/'.join(f'{c:.2f}' for c in split)}{flag}"


def rate_line(row: dict) -> str:
    errors = f"{row['errors']} err" if row["errors"] else ""
    return (
        f"  {row['scenario']:46} {_n(row['eps']):>9} ev/s {_n(row['rps']):>7} req/s"
        f"  p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:7.2f}  max {row['max_ms']:7.1f} ms"
        f"  cores {_cores(row['cores'], RATE_CORES)} {errors}"
    )


def lag_line(lag: dict) -> str:
    return (
        f"  end-to-end lag (202 -> readable), FLUSH_INTERVAL_S={lag['flush_interval_s']:g}:"
        f" p50 {_n(lag['p50_ms'])} ms, p99 {_n(lag['p99_ms'])} ms, max {_n(lag['max_ms'])} ms"
        f" ({lag['found']}/{lag['probes']} probes found, polled every"
        f" {lag['poll_interval_s'] * 1000:.0f} ms)"
    )


def memory_line(row: dict) -> str:
    return (
        f"  batch {row['batch_size']:>4}: {row['redis_bytes_per_event']:7.1f} B/event in Redis"
        f" vs {row['msgpack_bytes_per_event']:6.1f} B MsgPack = {row['ratio']:.2f}x"
        f"  ({row['events']:,} events in {row['entries']:,} entries,"
        f" used_memory {row['used_memory_mb']:,.0f} MB)"
    )


def crowd_line(row: dict) -> str:
    return (
        f"  {row['server']:16} {row['answered_2xx']:>3} of {row['requests']} answered 2xx,"
        f" median {row['median_ms']:8.1f} ms, worst {row['worst_ms']:8.1f} ms;"
        f" {row['idle_opened']} of {row['idle']} idle connections opened,"
        f" slowest slow sender cut after {row['slow_cut_after_s'] or ['never']} s"
    )


def archive_query_line(fmt: str, row: dict) -> str:
    return (
        f"  query over {fmt:10} {row['total_s']:7.2f} s ({row['load_s']:.2f} s listing, reading"
        f" and decoding {row['objects']} objects, {row['query_s']:.3f} s for the group-by);"
        f" {row['raw_rows']:,} rows, {row['events']:,} distinct events"
    )


# `event-ingest query` over raw NDJSON, rows scanned per second of the whole process (issue 28).
NDJSON_QUERY_TARGET_EPS = 150_000


def query_process_line(fmt: str, row: dict) -> str:
    target = ""
    if fmt == "ndjson":
        met = row["events_per_s"] >= NDJSON_QUERY_TARGET_EPS
        target = f" (target >= {NDJSON_QUERY_TARGET_EPS:,}: {'met' if met else 'NOT MET'})"
    return (
        f"  `event-ingest query` process over {fmt:10} {row['process_s']:7.2f} s wall"
        f" ({row['seconds']:.2f} s from the command's start), peak RSS"
        f" {round(row['peak_rss_bytes'] / 2**20):,} MB: {row['events_per_s']:,} rows/s{target}"
    )


def compaction_line(row: dict) -> str:
    errors = f"; errors: {row['errors']}" if row["errors"] else ""
    # Runs before compaction was measured in a process of its own have no peaks.
    peaks = (
        f", peak RSS {row['peak_rss_mb']:,} MB (Arrow {row['arrow_peak_mb']:,} MB)"
        if "peak_rss_mb" in row
        else ""
    )
    return (
        f"  compaction: {row['events_read']:,} rows of {row['hours']} hours read,"
        f" {row['events_written']:,} written, {row['seconds']} s ="
        f" {row['events_per_s'] or 0:,} rows/s{peaks}{errors}"
    )


def compaction_memory_line(row: dict) -> str:
    return (
        f"  compaction memory, an hour of 20,000 events: peak RSS {row['alone_rss_mb']:,} MB"
        f" (Arrow {row['alone_arrow_mb']:,} MB) alone, {row['after_rss_mb']:,} MB"
        f" (Arrow {row['after_arrow_mb']:,} MB) after 24 compacted hours of 200,000:"
        f" {row['rss_ratio']:.2f}x RSS, {row['arrow_ratio']:.2f}x Arrow"
    )


# `event-ingest query`'s own peak RSS over compacted archives (issue 28): at most this, and
# the larger archive's at most QUERY_RSS_GROWTH times the smaller's.
QUERY_RSS_LIMIT_MB = 600
QUERY_RSS_GROWTH = 1.15


def query_memory_line(row: dict) -> str:
    small, large = row["small"], row["large"]
    peaks = [round(r["peak_rss_bytes"] / 2**20) for r in (small, large)]
    met = max(peaks) < QUERY_RSS_LIMIT_MB and row["rss_ratio"] <= QUERY_RSS_GROWTH
    return (
        f"  query memory, the group-by by `event-ingest query` over compacted events: peak RSS"
        f" {peaks[0]:,} MB ({small['seconds']:.2f} s) over {small['events']:,},"
        f" {peaks[1]:,} MB ({large['seconds']:.2f} s) over {large['events']:,}:"
        f" {row['rss_ratio']:.2f}x (target < {QUERY_RSS_LIMIT_MB} MB at both and at most"
        f" {QUERY_RSS_GROWTH:.2f}x: {'met' if met else 'NOT MET'})"
    )


def privacy_scan_line(fmt: str, row: dict) -> str:
    runs = row.get("runs_eps", [])
    spread = f" [{_n(min(runs))}..{_n(max(runs))}]" if len(runs) > 1 else ""
    return (
        f"  privacy scan of {fmt:8} {row['total_s']:7.2f} s ({row['load_s']:.2f} s listing,"
        f" reading and decoding {row['objects']} objects, {row['query_s']:.3f} s for the SQL):"
        f" {_n(row['events_per_s'])} events/s{spread} over {row['events']:,} rows;"
        f" Arrow holds {row['arrow_mb']:,} MB ({_n(row['arrow_bytes_per_event'])} B/event);"
        f" {row['linked']} linked IDs, {row['objects_found']} objects to rewrite;"
        f" a billion events at this rate: {row['billion_events_h']:,} h,"
        f" {_n(row.get('billion_events_gb'))} GB held"
    )


def privacy_rewrite_line(fmt: str, row: dict) -> str:
    return (
        f"  privacy rewrite of {fmt:8} {row['objects']} objects ({row['mb']} MB) in"
        f" {row['seconds']} s = {_n(row['objects_per_s'], 1)} objects/s,"
        f" {_n(row['events_per_s'])} events/s; {row['events_deleted']:,} of the subjects'"
        f" events deleted, {row['events_kept']:,} kept"
    )


# Issue 28: one consumer writing Parquet drains at least this share of its NDJSON rate.
PARQUET_DRAIN_RATIO_TARGET = 0.8


def drain_format_line(rows: list[dict]) -> str | None:
    """One consumer's Parquet drain rate over its NDJSON rate, in the same run: each format's
    best drain (the phase runs them by turns, so that a slow minute of the VM does not land on
    one format only); None unless the run drained both."""
    best = {
        archive_format: max(rates)
        for archive_format in ("ndjson", "parquet")
        if (rates := _single_drains(rows, archive_format))
    }
    if len(best) < 2:
        return None
    ratio = best["parquet"] / best["ndjson"]
    met = ratio >= PARQUET_DRAIN_RATIO_TARGET
    return (
        f"  1 consumer writing Parquet drains {ratio:.2f}x its NDJSON rate, best drain of each"
        f" ({_n(best['parquet'])} of {_rates(rows, 'parquet')} against {_n(best['ndjson'])} of"
        f" {_rates(rows, 'ndjson')}; target >= {PARQUET_DRAIN_RATIO_TARGET}x:"
        f" {'met' if met else 'NOT MET'})"
    )


def _single_drains(rows: list[dict], archive_format: str) -> list[int]:
    """The rates of the drains by one consumer in `archive_format`, in the order run."""
    return [
        row["events_per_s"]
        for row in rows
        if row["consumers"] == 1 and row.get("format", "ndjson") == archive_format
    ]


def _rates(rows: list[dict], archive_format: str) -> str:
    return ", ".join(_n(rate) for rate in _single_drains(rows, archive_format))


def drain_line(row: dict) -> str:
    per_event = row["cores"].get("consumers", 0) * 1e6 / row["events_per_s"]
    return (
        f"  {row['consumers']} consumer(s), {row.get('format', 'ndjson'):7}:"
        f" {_n(row['events_per_s']):>9} ev/s"
        f" (10-90%: {_n(row['events_per_s_10_90'])}, with process start:"
        f" {_n(row['events_per_s_with_startup'])}), {row['events']:,} events in"
        f" {row['seconds']:.1f} s, archived per runner logs {row['archived_by_runners']:,}"
        f"  cpu {per_event:.1f} us/ev  cores {_cores(row['cores'], DRAIN_CORES)}"
    )


# Issue 29: the hot routes' requests/s at saturation as a share of the do-nothing WSGI app's
# on the same bodies, measured by turns in one run (phases/ingest.py): route -> (the
# do-nothing app's row, the least share).
_NOOP_BATCH = "baseline: do-nothing WSGI, 100-event body"
INGEST_SHARE_TARGETS = {
    "/batch 100 events": (_NOOP_BATCH, 0.25),
    "/v1/batch 100 events (Segment)": ("baseline: do-nothing WSGI, /v1/batch 100-event body", 0.25),
    "/v1/t 1 event (analytics.js)": ("baseline: do-nothing WSGI, /v1/t 1-event body", 0.5),
}


def floor_of(route: str) -> str:
    """The scenario of `route`'s floor: the append alone (baselines.create_append_only) on the
    same bodies, beside the route and its do-nothing app."""
    return f"floor: the append alone, {route}"


# The do-nothing app each row is compared with: a hot route's and its floor's own, on the same
# bodies.
_NOOP_OF = {
    **{route: noop for route, (noop, _) in INGEST_SHARE_TARGETS.items()},
    **{floor_of(route): noop for route, (noop, _) in INGEST_SHARE_TARGETS.items()},
}
# ... and p99 at 1,000 events/s over at least so many requests, in a full run (phases/rate.py).
BATCHES_AT_RATE = "/batch 100 events at 10 req/s"
SINGLES_AT_RATE = "/v1/t 1 event (analytics.js) at 1,000 req/s"
LATENCY_TARGETS = {BATCHES_AT_RATE: 1_000, SINGLES_AT_RATE: 10_000}


def ingest_targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 29 the run measured."""
    out = []
    for route, (baseline, share) in INGEST_SHARE_TARGETS.items():
        row, noop = _find(results["ingest"], route), _find(results["ingest"], baseline)
        if row and noop and noop["rps"]:
            measured = row["rps"] / noop["rps"]
            shown = f"{measured:.2f}x ({_n(row['rps'])}/{_n(noop['rps'])})"
            floor = _find(results["ingest"], floor_of(route))
            if floor and floor.get("rps"):  # the most any ingest of this design reaches
                shown += f"; the append alone {floor['rps'] / noop['rps']:.2f}x"
            out.append(
                (
                    f"{route}: >= {share}x do-nothing req/s",
                    shown,
                    "met" if measured >= share else "NOT met",
                )
            )
    for scenario, requests in LATENCY_TARGETS.items():
        row = _find(results["fixed_rate"], scenario)
        if row:
            if row["requests"] < requests:  # a quick run's: too few to say
                verdict = "-"
            else:
                verdict = "met" if row["p99_ms"] <= TARGETS["p99_ms_at_1000"] else "NOT met"
            out.append(
                (
                    f"{scenario}: p99 <= 10 ms, >= {requests:,} requests",
                    f"{row['p99_ms']:.2f} ms, {row['requests']:,}",
                    verdict,
                )
            )
    return out


def _find(rows: list[dict], scenario: str) -> dict | None:
    return next((r for r in rows if r["scenario"] == scenario and r.get("available", True)), None)


def targets(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 6 the run measured."""
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    batch = _find(results["ingest"], "/batch 100 events")
    if batch:
        out.append(
            (
                "/batch 100: >= 100,000 ev/s",
                _n(batch["eps"]),
                verdict(batch["eps"] >= TARGETS["batch_eps"]),
            )
        )
    segment = _find(results["ingest"], "/v1/batch 100 events (Segment)")
    if segment:
        out.append(
            (
                "/v1/batch: >= 80,000 ev/s",
                _n(segment["eps"]),
                verdict(segment["eps"] >= TARGETS["segment_eps"]),
            )
        )
    elif results["ingest"]:
        out.append(("/v1/batch: >= 80,000 ev/s", "not available", "-"))
    rate = _find(results["fixed_rate"], BATCHES_AT_RATE)
    if rate:
        out.append(
            (
                "p99 <= 10 ms at 1,000 ev/s",
                f"{rate['p99_ms']:.2f} ms",
                verdict(rate["p99_ms"] <= TARGETS["p99_ms_at_1000"]),
            )
        )
    # The targets are NDJSON's (the default); runs before Parquet existed have no "format".
    # Each consumer count's first drain: 1 and 2 consumers ran side by side.
    drains: dict[int, int] = {}
    for row in results["drain"]:
        if row.get("format", "ndjson") == "ndjson":
            drains.setdefault(row["consumers"], row["events_per_s"])
    if 1 in drains:
        out.append(
            (
                "1 consumer drains >= 200,000 ev/s",
                _n(drains[1]),
                verdict(drains[1] >= TARGETS["drain_eps_1"]),
            )
        )
    if 1 in drains and 2 in drains:
        out.append(
            (
                "2 consumers drain faster than 1",
                f"{drains[2] / drains[1]:.2f}x",
                verdict(drains[2] > drains[1]),
            )
        )
    memory = next((row for row in results["memory"] if row["batch_size"] == 100), None)
    if memory:
        out.append(
            (
                "Redis memory <= 1.5x MsgPack",
                f"{memory['ratio']:.2f}x",
                verdict(memory["ratio"] <= TARGETS["memory_ratio"]),
            )
        )
    return out


def _commit(commit: dict | None) -> str:
    """`abc1234`, `abc1234 plus uncommitted changes`, or `?` (runs before it was recorded)."""
    if not commit or not commit.get("sha"):
        return "?"
    return commit["sha"][:7] + (" plus uncommitted changes" if commit.get("dirty") else "")


def table(results: dict) -> str:
    machine = results["machine"]
    lines = [
        "",
        "=" * 100,
        f"benchmark {results['started_at']} ({results['mode']}), {machine['cpus']} cores,"
        f" load average at start {machine['loadavg_at_start']}, redis {machine.get('redis', '?')}",
        f"commit {_commit(results.get('commit'))}, {machine.get('cpu_model') or '?'},"
        f" Python {machine['python']}, phases {', '.join(results.get('phases', [])) or '?'}",
        f"gunicorn (local/gunicorn.conf.py): {machine['gunicorn']}",
        f"load generator: {results['loadgen']}",
    ]
    plan = results["plan"]
    if results["ingest"]:
        lines += [
            "",
            f"ingest at saturation: {plan['connections']} connections,"
            f" median of {plan['repeat']} x {plan['duration_s']:g} s [min..max ev/s];"
            f" cpu = gunicorn + Redis CPU time per request and per event; workers = cores of"
            f" each gunicorn worker, IMBALANCED when one worker holds the connections;"
            f" cores = {'/'.join(SAT_CORES)}",
        ]
        for row in results["ingest"]:
            line = ingest_line(row)
            # Against the do-nothing app on the same bodies where it ran beside, else on the
            # 100-event body.
            noop = _find(results["ingest"], _NOOP_OF.get(row["scenario"], _NOOP_BATCH))
            baseline = row["scenario"].startswith("baseline: do-nothing WSGI")
            if noop and row.get("available", True) and not baseline and noop["rps"]:
                line += f"  [{row['rps'] / noop['rps']:.0%} of do-nothing req/s]"
            lines.append(line)
    if results["fixed_rate"]:
        lines += ["", f"fixed rate, 1 consumer running; cores = {'/'.join(RATE_CORES)}"]
        lines += [rate_line(row) for row in results["fixed_rate"]]
    if results.get("lag"):
        lines.append(lag_line(results["lag"]))
    if results["memory"]:
        lines += ["", "Redis memory per buffered event"]
        lines += [memory_line(row) for row in results["memory"]]
    if results["drain"]:
        lines += [
            "",
            f"drain (FLUSH_INTERVAL_S=1, default size hints); cores = {'/'.join(DRAIN_CORES)}",
        ]
        lines += [drain_line(row) for row in results["drain"]]
        ratio = drain_format_line(results["drain"])
        lines += [ratio] if ratio else []
    if results.get("archive"):
        archive = results["archive"]
        lines += ["", f"the archive read back ({archive['events']:,} events, 1% stored twice)"]
        lines += [archive_query_line(f, row) for f, row in archive["query"].items()]
        lines += [query_process_line(f, row) for f, row in archive.get("process", {}).items()]
        if archive.get("compaction"):  # absent when the compaction phase did not run
            lines.append(compaction_line(archive["compaction"]))
        if archive.get("compaction_memory"):
            lines.append(compaction_memory_line(archive["compaction_memory"]))
        if archive.get("query_memory"):
            lines.append(query_memory_line(archive["query_memory"]))
    if results.get("crowd"):
        lines += ["", "a normal client while 500 idle keep-alive and 100 slow connections are open"]
        lines += [crowd_line(row) for row in results["crowd"]]
    replication = results.get("replication") or {}
    if replication.get("saturation") or replication.get("fixed_rate"):
        lines += [
            "",
            "replica acknowledgement: one local replica attached; ingest without WAIT and with"
            " REDIS_WAIT_REPLICAS=1, same Redis (cores: redis = primary + replica)",
        ]
        lines += [ingest_line(row) for row in replication.get("saturation", [])]
        lines += [rate_line(row) for row in replication.get("fixed_rate", [])]
        lines += wait_cost_lines(replication)
    if results.get("metrics"):
        lines += [
            "",
            "the metrics' cost: ingest with METRICS_ENABLED on and off, runs taking turns",
        ]
        lines += [ingest_line(row) for row in results["metrics"]]
        lines += metrics_cost_lines(results["metrics"])
        lines += [metrics_in_process_line(row) for row in results.get("metrics_in_process", [])]
    if results.get("cluster"):
        layout = results["cluster_layout"]
        lines += [
            "",
            f"Redis Cluster: {layout['primaries']} local primaries, ingest with 1 shard and with"
            f" {layout['shards']}, runs taking turns (cores: redis = all the primaries)",
        ]
        lines += [ingest_line(row) for row in results["cluster"]]
    if results.get("rate_limits"):
        lines += [
            "",
            "the rate limits' cost: in process, no limits beside a source and an address limit,"
            " rounds taking turns",
        ]
        lines += [rate_limits_line(row) for row in results["rate_limits"]]
    if results.get("lambda_handler"):
        lines += [
            "",
            "the Lambda handler, warm, in process (API Gateway HTTP API events; issue 29)",
        ]
        lines += [lambda_handler_line(row) for row in results["lambda_handler"]]
    lines += enrichment_lines(results)
    lines += plan_lines(results)
    lines += privacy_lines(results)
    checks = targets(results)
    if checks:
        lines += ["", "targets (issue 6)"]
        lines += [f"  {name:40} {measured:>14}  {verdict}" for name, measured, verdict in checks]
    hot = ingest_targets(results)
    if hot:
        lines += ["", "targets (issue 29: shipped defaults, the do-nothing app by turns)"]
        lines += [f"  {name:58} {measured:>22}  {verdict}" for name, measured, verdict in hot]
    lines.append("=" * 100)
    return "\n".join(lines)


def privacy_lines(results: dict) -> list[str]:
    """The `privacy` phase's section: the local finder's scan and the rewrite of what it
    found (absent when the phase did not run)."""
    privacy = results.get("privacy")
    if not privacy:
        return []
    repeat = results["plan"]["repeat"]
    spread = " [min..max events/s]" if repeat > 1 else ""
    lines = [
        "",
        f"privacy deletion without Athena ({privacy['events']:,} events, 1% stored twice;"
        f" {privacy['subjects']} subjects): LocalFinder's scan, median of {repeat}{spread}, and"
        f" the rewrite of every object it found; a billion events extrapolated at the scan's"
        f" rate (time, Arrow memory)",
    ]
    lines += [privacy_scan_line(fmt, row) for fmt, row in privacy["scan"].items()]
    lines += [privacy_rewrite_line(fmt, row) for fmt, row in privacy["rewrite"].items()]
    return lines


def wait_cost_lines(replication: dict) -> list[str]:
    """REDIS_WAIT_REPLICAS=1 against no WAIT, as ratios of the same run."""
    lines = []
    by_label = {row["scenario"]: row for row in replication.get("saturation", [])}
    for size in (1, 100):
        plain = by_label.get(f"/batch {size} events, no WAIT")
        waiting = by_label.get(f"/batch {size} events, WAIT 1")
        if plain and waiting and plain.get("rps") and waiting.get("rps"):
            lines.append(
                f"  cost of WAIT 1, /batch {size}: {waiting['rps'] / plain['rps']:.0%} of the"
                f" req/s, p50 {waiting['p50_ms'] - plain['p50_ms']:+.2f} ms"
            )
    rate = {row["scenario"]: row for row in replication.get("fixed_rate", [])}
    plain = rate.get("/batch 10 events at 100 req/s, no WAIT")
    waiting = rate.get("/batch 10 events at 100 req/s, WAIT 1")
    if plain and waiting:
        lines.append(
            f"  cost of WAIT 1 at 100 req/s: p50 {waiting['p50_ms'] - plain['p50_ms']:+.2f} ms,"
            f" p99 {waiting['p99_ms'] - plain['p99_ms']:+.2f} ms"
        )
    return lines


def metrics_cost_lines(rows: list[dict]) -> list[str]:
    """Server CPU per request with metrics over without (steadier than throughput)."""
    by_label = {row["scenario"]: row for row in rows if row.get("available", True)}
    lines = []
    for size in (1, 100):
        on = by_label.get(f"/batch {size} events, metrics on")
        off = by_label.get(f"/batch {size} events, metrics off")
        if (
            on
            and off
            and on.get("server_cpu_us_per_request")
            and off.get("server_cpu_us_per_request")
        ):
            ratio = on["server_cpu_us_per_request"] / off["server_cpu_us_per_request"]
            lines.append(
                f"  cost of the metrics, /batch {size}: {ratio - 1:+.1%} server CPU per request"
                f" ({on['server_cpu_us_per_request']} vs {off['server_cpu_us_per_request']} us),"
                f" {on['rps'] / off['rps']:.0%} of the req/s"
            )
    return lines


def rate_limits_line(row: dict) -> str:
    return (
        f"  /batch {row['events_per_request']}: {row['cost_us_per_request']:+} us per request,"
        f" {row['cost_us_per_event']:+} us per event (the app's CPU {row['app_on_us']} vs"
        f" {row['app_off_us']} us, {row['app_cost_share']:+.1%}; Redis's script"
        f" {row['redis_on_us']} vs {row['redis_off_us']} us; least of {row['rounds']} x"
        f" {row['requests']} requests)"
    )


def _with_and_without(row: dict, with_what: str) -> str:
    """An in-process A/B row's figures: per request with `with_what` and without, the cost."""
    return (
        f"{row['on_us']} us per request with {with_what}, {row['off_us']} without:"
        f" {row['cost_us']:+} us ({row['cost_share']:+.1%}), {row['cost_us_per_event']:+} us per"
        f" event"
    )


def _judged(row: dict) -> str:
    """The row's verdict against its target, and how it was measured."""
    verdict = "met" if row["met"] else "NOT met"
    judged = f"target {row['target']}: {verdict}" if row["target"] else "no target"
    return f"{judged} (least of {row['rounds']} x {row['requests']} requests)"


def lambda_handler_line(row: dict) -> str:
    return (
        f"  {row['events_per_request']:>3} event(s) an invocation: {row['duration_us']:,.0f} µs"
        f" ({row['per_event_us']:,.2f} µs per event), the least of {row['rounds']} rounds of"
        f" {row['requests']:,}"
    )


def enrichment_line(row: dict) -> str:
    return (
        f"  {row['path']} {row['events_per_request']:>3} event(s), {row['clients']:>4}"
        f" client(s): {_with_and_without(row, 'enrichment')}; {_judged(row)}"
    )


def enrichment_cold_start_line(cold: dict) -> str:
    return (
        f"  cold start (median of {cold['runs']} fresh processes): opening the database"
        f" ({cold['database_mb']} MB) {cold['open_database_ms']:.2f} ms, its first lookup"
        f" {cold['first_lookup_ms']:.3f} ms; the Enricher from Settings"
        f" {cold['enricher_without_imports_s']:.2f} s, {cold['enricher_with_imports_s']:.2f} s"
        f" with its imports ({cold['imports_s']:.2f} s)"
    )


def enrichment_lines(results: dict) -> list[str]:
    """The `enrichment` phase's section (absent when the phase did not run)."""
    enrichment = results.get("enrichment")
    if not enrichment:
        return []
    database = enrichment["database"]
    lines = [
        "",
        f"enrichment's cost (issue 26): in process, analytics.js's requests to the app with every"
        f" enrichment on (a City database of {database['networks']:,} networks,"
        f" IP_HANDLING=anonymize) beside off, rounds taking turns; one client (its location"
        f" cached: the targets' traffic), or many (a lookup in the database at every request:"
        f" the worst case, no target)",
    ]
    lines += [enrichment_line(row) for row in enrichment["rows"]]
    if enrichment.get("cold_start"):
        lines.append(enrichment_cold_start_line(enrichment["cold_start"]))
    return lines


def plan_line(row: dict) -> str:
    plan = f"a {row['planned_events']}-event plan"
    return (
        f"  /batch {row['events_per_request']:>3} event(s), {row['kind']}:"
        f" {_with_and_without(row, plan)}; the check alone {row['check_us']} us per request,"
        f" {row['check_us_per_event']} us per event; {_judged(row)}"
    )


def plan_lines(results: dict) -> list[str]:
    """The `plans` phase's section (absent when the phase did not run)."""
    plans = results.get("plans")
    if not plans:
        return []
    return [
        "",
        f"a tracking plan's cost (issue 27): in process, /batch bodies of planned events to the"
        f" app with a {plans['planned_events']}-event plan (tag mode) beside none, rounds taking"
        f" turns",
        *(plan_line(row) for row in plans["rows"]),
    ]


def metrics_in_process_line(row: dict) -> str:
    share = row.get("share_of_server")
    of_server = (
        f", {share:+.1%} of the server's {row['server_cpu_us_per_request']} us per request"
        if share is not None
        else ""
    )
    return (
        f"  in process, /batch {row['events_per_request']}: the app's CPU per request"
        f" {row['on_us']} us with metrics, {row['off_us']} without: {row['cost_us']:+} us"
        f" ({row['cost_share']:+.1%} of the app{of_server};"
        f" least of {row['rounds']} x {row['requests']} requests)"
    )


def write(results: dict, out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    results["targets"] = [
        {"target": name, "measured": measured, "verdict": verdict}
        for name, measured, verdict in targets(results)
    ]
    path = out_dir / f"results-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"chart-{stamp}.svg").write_text(chart(results))
    return path


def _drain_label(row: dict) -> str:
    """Which drain of the run (results before drains were numbered have no `run`)."""
    run = f" {row['run']}" if "run" in row else ""
    return f"drain{run}, {row['consumers']} consumer(s), {row.get('format', 'ndjson')}"


def chart(results: dict) -> str:
    """Horizontal bars: events/s of every saturation and drain measurement."""
    bars = [
        (row["scenario"], row["eps"] or row["rps"] * row.get("events_per_request", 1))
        for row in results["ingest"]
        if row.get("available", True)
    ]
    bars += [(_drain_label(row), row["events_per_s"]) for row in results["drain"]]
    top = max([value for _, value in bars] + [TARGETS["batch_eps"]])
    width, label_w, bar_h = 900, 330, 22
    height = 40 + bar_h * len(bars)
    scale = (width - label_w - 90) / top
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<text x="10" y="18" font-weight="bold">events/s ({results["started_at"]}, '
        f"{results['machine']['cpus']} cores; do-nothing rows: req/s x 100)</text>",
    ]
    for index, (name, value) in enumerate(bars):
        y = 30 + index * bar_h
        # Baselines and floors in grey: not ingest, whatever their bars reach.
        colour = "#999" if name.startswith(("baseline", "floor")) else "#3a7bd5"
        parts.append(f'<text x="10" y="{y + 15}">{_escape(name)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y + 3}" width="{value * scale:.1f}" '
            f'height="{bar_h - 6}" fill="{colour}"/>'
        )
        parts.append(
            f'<text x="{label_w + value * scale + 5:.1f}" y="{y + 15}">{value:,.0f}</text>'
        )
    target_x = label_w + TARGETS["batch_eps"] * scale
    parts.append(
        f'<line x1="{target_x:.1f}" y1="26" x2="{target_x:.1f}" y2="{height}" '
        'stroke="red" stroke-dasharray="4"/>'
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
