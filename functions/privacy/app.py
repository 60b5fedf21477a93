"""The privacy function: carry out the pending deletions for as long as the budget allows.

Lambda calls `handler` on a schedule; `event-ingest privacy run` runs the same pass
(`shared.archive.privacy.deletion`) from the command line. Here Athena finds the objects that
hold the subjects' events (`AthenaFinder`, over the template's tables). The context's
`get_remaining_time_in_millis()` bounds the pass; what an invocation leaves undone (out of
time, an hour being compacted, stream entries not archived yet) the next one resumes.

Each invocation reports through EMF (nothing scrapes a Lambda function): the deletions pending,
failed, and finished by this invocation, and the age of the oldest deletion not finished, which
PrivacyDeletionOverdueAlarm watches. An invocation after which a deletion has failed ends in an
error, so that Lambda's Errors metric and PrivacyErrorsAlarm see it; the next one tries again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client.core import GaugeMetricFamily, Metric

from shared import metrics, regulations
from shared.archive.privacy import athena
from shared.archive.privacy.deletion import Deletion, Pass
from shared.archive.privacy.store import RegulationStore
from shared.archive.storage import ObjectStore
from shared.regulations import Regulation
from shared.settings import Settings
from shared.stream import Client, connect

log = logging.getLogger(__name__)

# A pass reads and writes many objects and retries nothing itself: the client retries each call.
STORE_ATTEMPTS = 4

_emf = metrics.EmfEmitter()


class DeletionFailed(Exception):
    """A deletion is in the failed state after this invocation (each with its error); the next
    invocation tries it again."""


@dataclasses.dataclass(frozen=True)
class Backends:
    settings: Settings
    store: ObjectStore
    redis: Client


@functools.cache
def backends() -> Backends:
    """One set per process, built from the environment at the first call and reused when warm;
    a misconfigured function fails here, before it reads or changes anything."""
    settings = Settings.from_env()
    athena.workgroup_of(settings)
    store = ObjectStore.from_settings(settings, attempts=STORE_ATTEMPTS)
    return Backends(settings, store, connect(settings))


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    found = backends()
    remaining_ms = context.get_remaining_time_in_millis

    def finder() -> athena.AthenaFinder:
        return athena.AthenaFinder.from_settings(found.settings, remaining_ms)

    deletion = Deletion(found.settings, found.store, found.redis, finder)
    result = None
    try:
        result = deletion.run(remaining_ms=remaining_ms)
    finally:  # reported even when the pass raised: the alarms need the counts most then
        every = report(found, result)
    failed = [r for r in every if r.deletes and r.state == regulations.FAILED]
    if failed:
        errors = "; ".join(f"{r.id}: {r.error}" for r in failed)
        raise DeletionFailed(f"{len(failed)} deletions failed (the next run retries): {errors}")
    return result.as_dict()


def report(found: Backends, result: Pass | None) -> list[Regulation]:
    """This invocation's gauges as EMF lines; the regulations they were read from (none when
    the bucket cannot be read: then nothing is reported, and the overdue alarm counts the
    missing report as breaching)."""
    try:
        every = RegulationStore(found.store, found.settings.s3_prefix).all()
    except (BotoCoreError, ClientError) as exc:
        log.warning("the regulations could not be read to report on them: %s", exc)
        return []
    finished = len(result.finished) if result is not None else 0
    _emf.emit(deletion_gauges(every, finished, datetime.now(UTC)))
    return every


def deletion_gauges(every: list[Regulation], finished: int, now: datetime) -> Iterator[Metric]:
    deletions = [r for r in every if r.deletes and r.state != regulations.FINISHED]
    failed = sum(r.state == regulations.FAILED for r in deletions)
    accepted = [datetime.fromisoformat(r.accepted_at) for r in deletions]
    oldest_s = (now - min(accepted)).total_seconds() if accepted else 0.0
    yield _gauge(
        "privacy_deletions_pending",
        "Deletions accepted and not finished (pending or running; failed ones apart).",
        len(deletions) - failed,
    )
    yield _gauge("privacy_deletions_failed", "Deletions whose last pass failed.", failed)
    yield _gauge("privacy_deletions_finished", "Deletions this invocation finished.", finished)
    yield _gauge(
        "privacy_oldest_deletion_seconds",
        "Since the oldest deletion not finished (failed ones included) was accepted; 0 when "
        "none is left.",
        oldest_s,
    )


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{metrics.PREFIX}{name}", help_text, value=value)
