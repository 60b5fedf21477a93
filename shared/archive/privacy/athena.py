"""Finding what a deletion must rewrite with Athena: the AWS backend of `Finder`, a query over
the tables template.yaml declares (`events_ndjson`, `events_parquet`, `events_compacted`), whose
`"$path"` names the objects holding the subjects' events. A distributed engine scans a large
archive; the function only rewrites what it found.

No ID is ever in a query's text, which Athena keeps for 45 days. Each finder (one per pass)
draws a random salt; Python sends the SHA-256 of salt + ID of each subject, and Athena compares
each row's ID hashed the same way (`to_hex(sha256(to_utf8(salt || user_id)))`). A salted hash,
not a keyed one (the salt is in the text too): someone reading the query history who guesses an
ID can check the guess against that pass's hashes, but can reverse none, and the hashes of one
pass match nothing of another's. The results of `linked` are anonymous IDs in clear: each result
object (and its metadata) is deleted from the result location as soon as it is read.

A query waits for Athena within the time budget (the Lambda's remaining time, less the
compactor's margin, as the pass keeps): one still running when the budget runs out is stopped,
and the pass ends out of time (the next one resumes, searching again); one that fails raises
with Athena's reason, and the pass fails. Up to HASHES_PER_QUERY hashes go in one query (Athena
takes 256 KB of text); more subjects take more queries, each scanning the identity columns
again.

Tested against moto's Athena, which runs no SQL (the tests give it its answers, and DuckDB runs
the same text over the archive LocalFinder reads): the SQL here has not yet run against Athena
itself.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from tenacity import RetryError

from shared import retrying
from shared.archive.compaction.compactor import Budget, OutOfTime, RemainingMs
from shared.archive.privacy.subjects import Subjects
from shared.settings import ConfigError, Settings

log = logging.getLogger(__name__)

TABLES = ("events_ndjson", "events_parquet", "events_compacted")  # template.yaml's Glue tables
HASHES_PER_QUERY = 2_500  # 68 bytes each in the text: a query stays well under 256 KB
# Without a Lambda's budget (the command line): Athena's own default limit for a query.
QUERY_TIMEOUT_S = 30 * 60
FIRST_POLL_S, MAX_POLL_S = 0.5, 5.0
T = TypeVar("T")


class AthenaFailed(Exception):
    """A query failed or was cancelled; the message says why, in Athena's words."""


class QueryOutOfTime(OutOfTime):
    """A query was still running when the budget ran out, and was stopped."""


class _Running(Exception):
    """The query is still queued or running: ask again."""


class AthenaFinder:
    def __init__(
        self,
        athena: Any,
        s3: Any,
        *,
        bucket: str,
        database: str,
        workgroup: str,
        output_location: str | None = None,
        remaining_ms: RemainingMs | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.athena, self.s3 = athena, s3
        self.bucket, self.database, self.workgroup = bucket, database, workgroup
        self.output_location = output_location
        self.remaining_ms = remaining_ms or _deadline(QUERY_TIMEOUT_S)
        self.keep_ms = Budget(self.remaining_ms).margin_ms
        self.sleep = sleep
        self.salt = secrets.token_hex(16)  # this pass's: its hashes match no other pass's
        self.objects_scanned = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, remaining_ms: RemainingMs | None = None
    ) -> AthenaFinder:
        workgroup = workgroup_of(settings)
        config = Config(connect_timeout=3, read_timeout=20, retries={"mode": "standard"})
        return cls(
            boto3.client("athena", config=config),
            boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=config),
            bucket=settings.s3_bucket,
            database=settings.athena_database,
            workgroup=workgroup,
            output_location=settings.athena_output_location,
            remaining_ms=remaining_ms,
        )

    # --- the Finder protocol ----------------------------------------------------------------

    def linked(self, user_ids: frozenset[str]) -> set[str]:
        found = set()
        for batch in _batches(sorted(user_ids)):
            rows = self.run(linked_sql(self.salt, [self.hashed(i) for i in batch]))
            found.update(linked_id for (linked_id,) in rows if linked_id)
        return found

    def objects(self, subjects: Subjects) -> set[str]:
        keys: set[str] = set()
        for users, anonymous, linked in _subject_batches(subjects):
            hashed = [[self.hashed(i) for i in ids] for ids in (users, anonymous, linked)]
            scanned = 0
            for path, count in self.run(objects_sql(self.salt, *hashed)):
                scanned += int(count)
                if path is not None:  # the one row without a path counts the other objects
                    keys.add(self._key_of(path))
            self.objects_scanned = max(self.objects_scanned, scanned)  # each query scans all
        return keys

    def close(self) -> None:
        """Nothing is held between queries."""

    # --- queries ----------------------------------------------------------------------------

    def hashed(self, subject_id: str) -> str:
        """What Athena's `to_hex(sha256(to_utf8(salt || id)))` gives for this ID."""
        return hashlib.sha256(f"{self.salt}{subject_id}".encode()).hexdigest().upper()

    def run(self, sql: str) -> list[tuple[str | None, ...]]:
        """The rows of one query (its header row left out), its result object deleted."""
        started = self.athena.start_query_execution(
            QueryString=sql,
            QueryExecutionContext={"Database": self.database},
            WorkGroup=self.workgroup,
            **self._result_configuration(),
        )
        execution = self._wait(started["QueryExecutionId"])
        try:
            return list(self._rows(execution["QueryExecutionId"]))
        finally:
            self._delete_result(execution)

    def _result_configuration(self) -> dict[str, Any]:
        if self.output_location is None:
            return {}
        return {"ResultConfiguration": {"OutputLocation": self.output_location}}

    def _wait(self, execution_id: str) -> dict[str, Any]:
        polling = retrying.within_budget(
            _Running,
            first_s=FIRST_POLL_S,
            max_s=MAX_POLL_S,
            remaining_ms=self.remaining_ms,
            keep_ms=self.keep_ms,
            sleep=self.sleep,
        )
        try:
            return polling(self._finished, execution_id)
        except RetryError:
            self.athena.stop_query_execution(QueryExecutionId=execution_id)
            log.warning(
                "Athena query %s still running at the end of the budget: stopped", execution_id
            )
            raise QueryOutOfTime(
                f"Athena query {execution_id} was still running when the time budget ran out"
            ) from None

    def _finished(self, execution_id: str) -> dict[str, Any]:
        execution = self.athena.get_query_execution(QueryExecutionId=execution_id)
        execution = execution["QueryExecution"]
        state = execution["Status"]["State"]
        if state == "SUCCEEDED":
            return execution
        if state in ("QUEUED", "RUNNING"):
            raise _Running()
        raise AthenaFailed(failure_message(execution))

    def _rows(self, execution_id: str) -> Iterator[tuple[str | None, ...]]:
        pages = self.athena.get_paginator("get_query_results").paginate(
            QueryExecutionId=execution_id, PaginationConfig={"PageSize": 1000}
        )
        first = True
        for page in pages:
            rows = page["ResultSet"]["Rows"]
            if first:  # a SELECT's results start with a row of its column names
                rows, first = rows[1:], False
            for row in rows:
                yield tuple(cell.get("VarCharValue") for cell in row["Data"])  # NULL: {}

    def _delete_result(self, execution: dict[str, Any]) -> None:
        """The result object and Athena's metadata beside it: `linked`'s name people."""
        location = execution.get("ResultConfiguration", {}).get("OutputLocation")
        if not location:
            return
        bucket, _, key = location.removeprefix("s3://").partition("/")
        objects = [{"Key": key}, {"Key": f"{key}.metadata"}]
        answer = self.s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        if answer.get("Errors"):
            failed = ", ".join(f"{e['Key']}: {e.get('Code')}" for e in answer["Errors"])
            raise AthenaFailed(f"the query results at {location} could not be deleted: {failed}")

    def _key_of(self, path: str) -> str:
        """`"$path"` is the object's s3:// URL."""
        bucket_url = f"s3://{self.bucket}/"
        if not path.startswith(bucket_url):
            raise AthenaFailed(
                f"Athena found an object outside the archive bucket ({path}): the tables of "
                f"database {self.database} read another bucket"
            )
        return path.removeprefix(bucket_url)


def workgroup_of(settings: Settings) -> str:
    """ATHENA_WORKGROUP, which the Athena backend cannot do without."""
    if settings.athena_workgroup is None:
        raise ConfigError("ATHENA_WORKGROUP must be set to find a deletion's objects with Athena")
    return settings.athena_workgroup


def failure_message(execution: dict[str, Any]) -> str:
    """Why a query ended without results, in Athena's words."""
    status = execution["Status"]
    reason = status.get("StateChangeReason") or status.get("AthenaError", {}).get("ErrorMessage")
    state = status["State"].lower()
    return f"Athena query {execution['QueryExecutionId']} {state}: {reason or 'no reason given'}"


# --- the SQL ----------------------------------------------------------------------------------


def _hash_of(column: str, salt: str) -> str:
    return f"to_hex(sha256(to_utf8('{salt}' || {column})))"


def _one_of(expression: str, hashes: list[str]) -> str:
    """Whether `expression` is one of `hashes` (hex: nothing to escape); never NULL."""
    if not hashes:
        return "false"
    listed = ", ".join(f"'{h}'" for h in hashes)
    return f"coalesce({expression} IN ({listed}), false)"


def _every_table(columns: str) -> str:
    return "\n  UNION ALL\n  ".join(f"SELECT {columns} FROM {table}" for table in TABLES)


def linked_sql(salt: str, user_hashes: list[str]) -> str:
    """The anonymous IDs beside the users' own events, and the `previousId` of their aliases
    (one scan of the identity columns)."""
    columns = (
        "nullif(user_id, '') AS user_id, nullif(anonymous_id, '') AS anonymous_id, "
        "CASE WHEN type = 'alias' THEN nullif(previous_id, '') END AS previous_id"
    )
    by_user = _one_of(_hash_of("user_id", salt), user_hashes)
    return (
        f"SELECT DISTINCT linked_id FROM (\n  {_every_table(columns)}\n) AS archived\n"
        "CROSS JOIN UNNEST(ARRAY[archived.anonymous_id, archived.previous_id]) AS ids(linked_id)\n"
        f"WHERE linked_id IS NOT NULL AND {by_user}"
    )


def objects_sql(
    salt: str, user_hashes: list[str], anonymous_hashes: list[str], linked_hashes: list[str]
) -> str:
    """One row per object holding a subject's event (its path, 1), and one row (NULL, n) for
    the n other objects: the objects matched as `Subjects.removed` matches rows, and the count
    of objects scanned, from one scan."""
    columns = (
        "\"$path\" AS object_key, nullif(user_id, '') AS user_id, "
        "nullif(anonymous_id, '') AS anonymous_id"
    )
    anonymous_hash = _hash_of("anonymous_id", salt)
    holds = (
        f"by_user OR {_one_of('anonymous_hash', anonymous_hashes)} "
        f"OR ({_one_of('anonymous_hash', linked_hashes)} AND (user_id IS NULL OR by_user))"
    )
    return (
        "SELECT CASE WHEN holds THEN object_key END AS object_key, count(*) AS objects FROM (\n"
        f"  SELECT object_key, bool_or({holds}) AS holds FROM (\n"
        f"    SELECT object_key, user_id, {anonymous_hash} AS anonymous_hash,\n"
        f"      {_one_of(_hash_of('user_id', salt), user_hashes)} AS by_user\n"
        f"    FROM (\n  {_every_table(columns)}\n    )\n"
        "  ) GROUP BY object_key\n"
        ") GROUP BY CASE WHEN holds THEN object_key END"
    )


def _batches(items: list[T]) -> Iterator[list[T]]:
    for start in range(0, len(items), HASHES_PER_QUERY):
        yield items[start : start + HASHES_PER_QUERY]


def _subject_batches(subjects: Subjects) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """The subjects in groups of at most HASHES_PER_QUERY IDs (users, anonymous, linked). Any
    split finds the same objects: a linked anonymous ID's event under a subject's userId is
    found by the group holding that userId."""
    kinds = (subjects.user_ids, subjects.anonymous_ids, subjects.linked)
    tagged = [(kind, subject_id) for kind, ids in enumerate(kinds) for subject_id in sorted(ids)]
    for batch in _batches(tagged):
        users, anonymous, linked = ([i for k, i in batch if k == kind] for kind in range(3))
        yield users, anonymous, linked


def _deadline(seconds: float) -> RemainingMs:
    end = time.monotonic() + seconds
    return lambda: int((end - time.monotonic()) * 1000)
