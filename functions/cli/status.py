"""`event-ingest status`: how far behind the archive is, per consumer group, and what the last
compaction run found, read from Redis (`shared.status`, the same reading as the ingest
function's /metrics gauges)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import click

from functions.cli.terminal import redis_error, table


@click.command(context_settings={"max_content_width": 100})
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of tables.")
@click.option(
    "--max-freshness",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Exit with status 1 when a group's oldest unacknowledged entry is older than this.",
)
@click.option(
    "--inactive-after",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    metavar="SECONDS",
    help="Flag a group with a backlog whose consumers have not read for this long.",
)
def status(as_json: bool, max_freshness: float | None, inactive_after: float) -> None:
    """Show the stream's backlog, freshness, consumers and dead letters.

    The stream's entries and their bytes (fields' names and values) are shown against
    STREAM_MAX_LEN and STREAM_MAX_BYTES: at either bound, ingest answers 503.

    \b
    For each consumer group:
      backlog      entries (one per request) and events not yet acknowledged:
                   pending (delivered to a consumer) plus undelivered (lag)
      freshness    age of the oldest entry not yet acknowledged, by Redis's
                   clock: how far behind the archive is
      consumers    each consumer's pending entries and idle time
    A group with a backlog and no consumer activity for --inactive-after is
    flagged: an abandoned group keeps every entry from being trimmed, and
    ingest ends up answering 503. It is never removed automatically
    (`redis-cli XGROUP DESTROY STREAM GROUP` does, if nobody will read it).

    \b
    Compaction, as its last run over every closed hour left it in Redis: the
    lag (since the oldest closed hour not yet compacted closed), the hours
    that failed and why, and the unreadable objects set aside.

    Reads REDIS_URL, REDIS_CLUSTER, STREAM_KEY, STREAM_SHARDS, STREAM_MAX_LEN and
    STREAM_MAX_BYTES like the functions do.
    """

    from shared.settings import ConfigError, Settings
    from shared.status import read_compaction_report, read_stream_status
    from shared.stream import REDIS_ERRORS, connect

    try:
        settings = Settings.from_env()
        client = connect(settings)
        current = read_stream_status(client, settings)
        compaction = read_compaction_report(client, settings.stream_key)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise redis_error(settings, exc) from None
    inactive = [g.name for g in current.groups if _inactive(g, inactive_after)]
    if as_json:
        document = _as_dict(current, inactive)
        document["compaction"] = _compaction_dict(compaction)
        click.echo(json.dumps(document, indent=1))
    else:
        _print_tables(current, inactive, inactive_after)
        _print_compaction(compaction, settings.s3_prefix)
    if max_freshness is not None and current.freshness_s > max_freshness:
        stalest = max(current.groups, key=lambda g: g.freshness_s)
        click.echo(
            f"freshness {current.freshness_s:.0f}s (group {stalest.name}) exceeds "
            f"--max-freshness {max_freshness:g}s",
            err=True,
        )
        sys.exit(1)


def _inactive(group: Any, after_s: float) -> bool:
    last_active = group.last_active_s
    return group.backlog_entries > 0 and (last_active is None or last_active > after_s)


def _as_dict(current: Any, inactive: list[str]) -> dict[str, Any]:
    document = dataclasses.asdict(current)
    document["freshness_s"] = current.freshness_s
    for group, source in zip(document["groups"], current.groups, strict=True):
        group["backlog_entries"] = source.backlog_entries
        group["last_active_s"] = source.last_active_s
        group["inactive"] = source.name in inactive
    if current.shards:
        document["shards"] = [_as_dict(shard, inactive) for shard in current.shards]
    else:
        del document["shards"]  # a stream of one key reads as it always did
    return document


def _print_tables(current: Any, inactive: list[str], inactive_after: float) -> None:
    click.echo(
        f"stream {current.key}: {current.length:,} entries (bound {current.max_len:,}), "
        f"{_size(current.bytes)} (bound {_size(current.max_bytes)}), "
        f"last ID {current.last_generated_id or '-'}, {current.dead_letters:,} dead letters, "
        f"Redis {current.redis_version}"
    )
    if not current.groups:
        click.echo("no consumer group yet: no consumer has run")
        return
    click.echo("")
    table([_group_row(group) for group in current.groups])
    consumers = [
        {
            "group": group.name,
            "consumer": consumer.name,
            "pending": f"{consumer.pending:,}",
            "idle": _duration(consumer.idle_s),
        }
        for group in current.groups
        for consumer in group.consumers
    ]
    if consumers:
        click.echo("")
        table(consumers)
    if current.shards:
        click.echo(f"\n{len(current.shards)} shards (the figures above are their totals):")
        table([_shard_row(shard, group) for shard in current.shards for group in shard.groups])
    for name in inactive:
        click.echo(
            f"\ngroup {name} has a backlog and no consumer has read for over "
            f"{_duration(inactive_after)}: if nobody will read it again, it pins the stream"
        )


def _compaction_dict(report: Any) -> dict[str, Any] | None:
    if report is None:
        return None
    return {**dataclasses.asdict(report), "age_s": report.age_s()}


def _print_compaction(report: Any, prefix: str) -> None:
    from shared.status import COMPACTION_REPORT_TTL_S

    if report is None:
        click.echo(
            f"\ncompaction: no run over every closed hour reported in the last "
            f"{_duration(COMPACTION_REPORT_TTL_S)}"
        )
        return
    lag = (
        f"oldest closed hour not compacted yet {report.oldest_hour}, closed "
        f"{_duration(report.lag_s)} before"
        if report.oldest_hour
        else "every closed hour compacted"
    )
    click.echo(
        f"\ncompaction ({report.scope}), last run {_duration(report.age_s())} ago: {lag}; "
        f"{report.hours_compacted:,} hours compacted, {len(report.failed):,} failed; "
        f"{report.unreadable_objects:,} unreadable objects set aside under {prefix}_unreadable/"
    )
    for failed in report.failed:
        click.echo(f"  {failed.hour} failed: {failed.error}")


def _group_row(group: Any) -> dict[str, str]:
    approximate = "" if group.undelivered_exact else " (at most)"
    estimated = "" if group.backlog_events_exact else " (estimated)"
    return {
        "group": group.name,
        "backlog entries": f"{group.backlog_entries:,}{approximate}",
        "events": f"{group.backlog_events:,}{estimated}",
        "pending": f"{group.pending:,}",
        "undelivered": f"{group.undelivered:,}{approximate}",
        "freshness": _duration(group.freshness_s),
        "oldest pending": _duration(group.oldest_pending_s),
        "last delivered": group.last_delivered_id,
        "consumers": str(len(group.consumers)),
    }


def _shard_row(shard: Any, group: Any) -> dict[str, str]:
    return {
        "shard": shard.key,
        "group": group.name,
        "entries": f"{shard.length:,}",
        "bytes": _size(shard.bytes),
        "backlog entries": f"{group.backlog_entries:,}",
        "freshness": _duration(group.freshness_s),
        "dead letters": f"{shard.dead_letters:,}",
    }


def _size(count: int) -> str:
    """Bytes for people: 512 B, 3.2 MiB, 1.0 GiB."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
