"""The Athena finder (shared/archive/privacy/athena.py) against moto's Athena, which runs no
SQL: each test gives moto the results Athena would answer (as moto documents, a queue of
results on its backend). Where the answers must follow from the SQL itself, DuckDB runs the
very text the finder sends over the archive LocalFinder reads, with Athena's two byte
functions stood in (`to_utf8` the identity, `to_hex` upper case over DuckDB's hex `sha256`).
Nothing here has run against Athena itself."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
import redis
from moto.athena.models import QueryResults, athena_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.moto_api import state_manager

from shared.archive.compaction import Compactor
from shared.archive.compaction.compactor import OutOfTime
from shared.archive.partitions import parse_hour
from shared.archive.privacy import athena
from shared.archive.privacy.athena import AthenaFailed, AthenaFinder, QueryOutOfTime
from shared.archive.privacy.finder import LocalFinder
from shared.archive.privacy.subjects import Subjects
from shared.archive.storage import ObjectStore
from shared.settings import Settings
from tests.archives import ev, write_ndjson, write_parquet
from tests.athena_answers import Row, answer

REGION = "us-east-1"
WORKGROUP, DATABASE, RESULTS = "events-wg", "event_archive", "athena-results"
ALICE, BOB = "alice-4f2c@example.com", "bob-81d0@example.com"
PHONE, LAPTOP, OLD_ID = "anon-phone-5e1", "anon-laptop-9b7", "anon-before-alias-33c"


@pytest.fixture
def aws(s3: Any) -> Any:
    """moto's Athena (inside the `s3` fixture's mock): the workgroup and the results bucket."""
    client = boto3.client("athena", region_name=REGION)
    client.create_work_group(Name=WORKGROUP)
    s3.create_bucket(Bucket=RESULTS)
    return client


@pytest.fixture
def backend(aws: Any) -> Any:
    return athena_backends[DEFAULT_ACCOUNT_ID][REGION]


@pytest.fixture
def queued() -> Iterator[None]:
    """Queries stay queued until the test says otherwise."""
    state_manager.set_transition("athena::execution", {"progression": "manual", "times": 10**9})
    yield
    state_manager.unset_transition("athena::execution")


def make_finder(aws: Any, s3: Any, settings: Settings, **options: Any) -> AthenaFinder:
    options.setdefault("remaining_ms", lambda: 900_000)
    return AthenaFinder(
        aws,
        s3,
        bucket=settings.s3_bucket,
        database=DATABASE,
        workgroup=WORKGROUP,
        output_location=f"s3://{RESULTS}/results/",
        **options,
    )


def results(names: list[str], rows: list[Row]) -> QueryResults:
    return QueryResults(**answer(names, rows))


def queries_sent(aws: Any) -> list[str]:
    """The text of every query, as Athena keeps it in its history for 45 days."""
    ids = aws.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    return [aws.get_query_execution(QueryExecutionId=i)["QueryExecution"]["Query"] for i in ids]


def path(settings: Settings, key: str) -> str:
    return f"s3://{settings.s3_bucket}/{key}"


# --- what is sent, and what comes back ------------------------------------------------------


def test_objects_are_the_paths_athena_found_and_no_query_holds_an_id(
    aws: Any, s3: Any, backend: Any, settings: Settings
) -> None:
    raw = "events/dt=2024-03-05/hour=10/1709632800000-0.ndjson.gz"
    compacted = "events/compacted/dt=2024-03-05/hour=11/compacted-0001.parquet"
    backend.query_results_queue.append(
        results(
            ["object_key", "objects"],
            [(path(settings, raw), "1"), (None, "40"), (path(settings, compacted), "1")],
        )
    )
    finder = make_finder(aws, s3, settings)
    subjects = Subjects(frozenset({ALICE}), frozenset({PHONE}), frozenset({LAPTOP}))

    assert finder.objects(subjects) == {raw, compacted}
    assert finder.objects_scanned == 42  # the two found and the 40 that hold no subject

    [sql] = queries_sent(aws)
    for subject_id in (ALICE, PHONE, LAPTOP):
        assert subject_id not in sql
        digest = hashlib.sha256(f"{finder.salt}{subject_id}".encode()).hexdigest().upper()
        assert f"'{digest}'" in sql  # what Athena's to_hex(sha256(to_utf8(...))) gives
    for column in ("user_id", "anonymous_id"):
        assert f"to_hex(sha256(to_utf8('{finder.salt}' || {column})))" in sql
    for table in ("events_ndjson", "events_parquet", "events_compacted"):
        assert f"FROM {table}" in sql
    execution = aws.get_query_execution(QueryExecutionId=backend_ids(aws)[0])["QueryExecution"]
    assert execution["QueryExecutionContext"] == {"Database": DATABASE}
    assert execution["WorkGroup"] == WORKGROUP


def backend_ids(aws: Any) -> list[str]:
    return aws.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]


def test_linked_ids_come_back_in_clear_and_their_results_are_deleted(
    aws: Any, s3: Any, backend: Any, settings: Settings
) -> None:
    backend.query_results_queue.append(results(["linked_id"], [(PHONE,), (OLD_ID,)]))
    finder = make_finder(aws, s3, settings)

    assert finder.linked(frozenset({ALICE, BOB})) == {PHONE, OLD_ID}

    [sql] = queries_sent(aws)
    assert ALICE not in sql and BOB not in sql
    assert finder.hashed(ALICE) in sql and finder.hashed(BOB) in sql
    # Athena wrote the results (moto too) where the finder said; they name people: gone.
    [execution_id] = backend_ids(aws)
    location = aws.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"][
        "ResultConfiguration"
    ]["OutputLocation"]
    assert location == f"s3://{RESULTS}/results/{execution_id}.csv"
    assert s3.list_objects_v2(Bucket=RESULTS).get("KeyCount") == 0


def test_each_pass_hashes_with_a_salt_of_its_own(aws: Any, s3: Any, settings: Settings) -> None:
    first, second = make_finder(aws, s3, settings), make_finder(aws, s3, settings)
    assert re.fullmatch(r"[0-9a-f]{32}", first.salt)
    assert first.salt != second.salt
    assert first.hashed(ALICE) != second.hashed(ALICE)


def test_no_subject_asks_athena_nothing(aws: Any, s3: Any, settings: Settings) -> None:
    finder = make_finder(aws, s3, settings)
    assert finder.objects(Subjects()) == set() and finder.linked(frozenset()) == set()
    assert queries_sent(aws) == []


def test_many_subjects_are_asked_in_several_queries(
    aws: Any, s3: Any, backend: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(athena, "HASHES_PER_QUERY", 2)
    keys = [f"events/dt=2024-03-05/hour=1{i}/1709632800000-0.ndjson.gz" for i in range(3)]
    for key in keys:
        backend.query_results_queue.append(
            results(["object_key", "objects"], [(path(settings, key), "1"), (None, "9")])
        )
    subjects = Subjects(frozenset({ALICE, BOB, "carol"}), frozenset({PHONE}), frozenset({LAPTOP}))
    finder = make_finder(aws, s3, settings)

    assert finder.objects(subjects) == set(keys)
    sent = queries_sent(aws)
    assert len(sent) == 3
    assert [len(re.findall(r"'[0-9A-F]{64}'", sql)) for sql in sent] == [2, 2, 1]
    assert finder.objects_scanned == 10  # each query scans every object: not added up


# --- failures ---------------------------------------------------------------------------------


def test_a_failed_query_raises_with_athena_s_reason(
    aws: Any, s3: Any, backend: Any, settings: Settings, queued: None
) -> None:
    reason = "HIVE_CURSOR_ERROR: Unexpected end of input stream"

    def athena_fails(_seconds: float) -> None:  # while the finder waits, Athena gives up
        for execution in backend.executions.values():
            execution.status = "FAILED"

    def with_reason(parsed: dict[str, Any], **_: Any) -> None:
        # Athena says why in Status (moto leaves it out); the shape of Athena's answer.
        status = parsed["QueryExecution"]["Status"]
        if status["State"] == "FAILED":
            status["StateChangeReason"] = reason
            status["AthenaError"] = {"ErrorCategory": 2, "ErrorMessage": reason}

    aws.meta.events.register("after-call.athena.GetQueryExecution", with_reason)
    finder = make_finder(aws, s3, settings, sleep=athena_fails)

    with pytest.raises(AthenaFailed) as failed:
        finder.linked(frozenset({ALICE}))
    [execution_id] = backend_ids(aws)
    assert str(failed.value) == f"Athena query {execution_id} failed: {reason}"
    assert ALICE not in str(failed.value)


def test_a_query_still_running_when_the_budget_runs_out_is_stopped(
    aws: Any, s3: Any, settings: Settings, queued: None
) -> None:
    clock = {"left_ms": 100_000}  # a quarter of it, 25 s, is kept for the rest of the pass
    waits: list[float] = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        clock["left_ms"] -= int(seconds * 1000)

    finder = make_finder(aws, s3, settings, remaining_ms=lambda: clock["left_ms"], sleep=wait)

    with pytest.raises(QueryOutOfTime) as stopped:
        finder.objects(Subjects(user_ids=frozenset({ALICE})))
    assert isinstance(stopped.value, OutOfTime)  # the pass ends out of time, not failed
    [execution_id] = backend_ids(aws)
    state = aws.get_query_execution(QueryExecutionId=execution_id)["QueryExecution"]["Status"]
    assert state["State"] == "CANCELLED"
    assert waits and max(waits) <= athena.MAX_POLL_S
    assert 25_000 <= clock["left_ms"] <= 25_000 + athena.MAX_POLL_S * 1000


def test_a_path_outside_the_archive_bucket_is_refused(
    aws: Any, s3: Any, backend: Any, settings: Settings
) -> None:
    elsewhere = "s3://someone-else/events/dt=2024-03-05/hour=10/x.ndjson.gz"
    backend.query_results_queue.append(results(["object_key", "objects"], [(elsewhere, "1")]))
    with pytest.raises(AthenaFailed, match="outside the archive bucket"):
        make_finder(aws, s3, settings).objects(Subjects(user_ids=frozenset({ALICE})))


def test_from_settings_needs_a_workgroup(settings: Settings) -> None:
    from shared.settings import ConfigError

    with pytest.raises(ConfigError, match="ATHENA_WORKGROUP"):
        AthenaFinder.from_settings(settings)
    configured = Settings.from_env(
        {"ATHENA_WORKGROUP": WORKGROUP, "ATHENA_OUTPUT_LOCATION": f"s3://{RESULTS}/x/"}
    )
    finder = AthenaFinder.from_settings(configured, remaining_ms=lambda: 1000)
    assert (finder.workgroup, finder.database) == (WORKGROUP, "event_archive")
    assert finder.output_location == f"s3://{RESULTS}/x/"
    with pytest.raises(ConfigError, match="ATHENA_OUTPUT_LOCATION"):
        Settings.from_env({"ATHENA_OUTPUT_LOCATION": "results-bucket/x/"})


# --- the SQL's meaning, run by DuckDB ---------------------------------------------------------


def seed(settings: Settings, store: ObjectStore, redis_client: redis.Redis) -> None:
    """Alice's events beside others', in raw NDJSON and Parquet and in a compacted object."""
    at = "2024-03-05T10:1{}:00.000Z"
    prefix = settings.s3_prefix
    write_ndjson(
        store,
        prefix,
        [
            (b"1709632800000-0", [ev("1", at.format(1), "Viewed", None, anonymousId=PHONE)]),
            (b"1709632800001-0", [ev("2", at.format(2), "Login", ALICE, anonymousId=PHONE)]),
        ],
    )
    alias = ev("3", at.format(3), "Alias", ALICE, type="alias", previousId=OLD_ID)
    write_parquet(store, prefix, [(b"1709636400000-0", [alias])])  # 10:xx too, parquet/
    shared_device = ev("4", "2024-03-05T12:00:00.000Z", "Viewed", BOB, anonymousId=PHONE)
    write_ndjson(store, prefix, [(b"1709640000000-0", [shared_device])])
    before = ev("5", "2024-03-05T13:00:00.000Z", "Viewed", None, anonymousId=OLD_ID)
    others = ev("6", "2024-03-05T13:00:01.000Z", "Viewed", BOB, anonymousId=LAPTOP)
    empty = ev("7", "2024-03-05T14:00:00.000Z", "Viewed", "", anonymousId=PHONE)
    write_ndjson(store, prefix, [(b"1709643600000-0", [before, others])])
    write_ndjson(store, prefix, [(b"1709647200000-0", [empty])])
    Compactor(settings, store, redis_client).compact([parse_hour("2024-03-05T13")])


@pytest.fixture
def local(s3: Any, settings: Settings, redis_client: redis.Redis) -> Iterator[LocalFinder]:
    store = ObjectStore(s3, settings.s3_bucket)
    seed(settings, store, redis_client)
    finder = LocalFinder(store, settings.s3_prefix)
    yield finder
    finder.close()


def duckdb_athena(local: LocalFinder, settings: Settings) -> Callable[[str], QueryResults]:
    """Athena's tables and byte functions over LocalFinder's DuckDB; a query's answer shaped as
    GetQueryResults gives it."""
    con = local.connection
    con.execute("CREATE OR REPLACE MACRO to_utf8(text) AS text")
    con.execute("CREATE OR REPLACE MACRO to_hex(text) AS upper(text)")  # DuckDB's sha256: hex
    roots = {"events_parquet": "parquet/", "events_compacted": "compacted/"}
    for table in athena.TABLES:
        root = roots.get(table)
        where = (
            f"object_key LIKE '{settings.s3_prefix}{root}%'"
            if root
            else " AND ".join(
                f"object_key NOT LIKE '{settings.s3_prefix}{r}%'" for r in roots.values()
            )
        )
        con.execute(
            f"""CREATE OR REPLACE VIEW {table} AS SELECT
            's3://{settings.s3_bucket}/' || object_key AS "$path", user_id, anonymous_id,
            type, previous_id FROM raw_events WHERE {where}"""
        )

    # Every table holds rows of the seed: each part of the SQL's union is used.
    assert all(con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in athena.TABLES)

    def answer(sql: str) -> QueryResults:
        found = con.sql(sql)
        rows = [tuple(None if v is None else str(v) for v in row) for row in found.fetchall()]
        return results(found.columns, rows)

    return answer


@pytest.fixture
def athena_over_duckdb(aws: Any, backend: Any, local: LocalFinder, settings: Settings) -> list[str]:
    """Each query the finder starts is answered by DuckDB running its text; returns the texts."""
    answer, texts = duckdb_athena(local, settings), []

    def run_in_duckdb(params: dict[str, Any], **_: Any) -> None:
        texts.append(params["QueryString"])
        backend.query_results_queue.append(answer(params["QueryString"]))

    aws.meta.events.register("provide-client-params.athena.StartQueryExecution", run_in_duckdb)
    return texts


SUBJECTS = [
    Subjects(user_ids=frozenset({ALICE})),
    Subjects(user_ids=frozenset({ALICE}), linked=frozenset({PHONE, OLD_ID})),
    Subjects(anonymous_ids=frozenset({LAPTOP})),
    Subjects(frozenset({BOB, "nobody"}), frozenset({"anon-nobody"}), frozenset({OLD_ID})),
]


def test_the_links_athena_finds_are_the_local_finder_s(
    aws: Any, s3: Any, settings: Settings, local: LocalFinder, athena_over_duckdb: list[str]
) -> None:
    finder = make_finder(aws, s3, settings)
    for user_ids in ({ALICE}, {BOB}, {ALICE, BOB}, {"nobody"}):
        expected = local.linked(frozenset(user_ids))
        assert finder.linked(frozenset(user_ids)) == expected, user_ids
    assert local.linked(frozenset({ALICE})) == {PHONE, OLD_ID}  # the seed links both
    assert not any(ALICE in sql or BOB in sql for sql in athena_over_duckdb)


@pytest.mark.parametrize("per_query", [athena.HASHES_PER_QUERY, 1])
def test_the_objects_athena_finds_are_the_local_finder_s(
    aws: Any,
    s3: Any,
    settings: Settings,
    local: LocalFinder,
    athena_over_duckdb: list[str],
    monkeypatch: pytest.MonkeyPatch,
    per_query: int,
) -> None:
    """However the subjects are split into queries: a linked anonymous ID's event under a
    subject's userId is found by the query of that userId."""
    monkeypatch.setattr(athena, "HASHES_PER_QUERY", per_query)
    for subjects in SUBJECTS:
        finder = make_finder(aws, s3, settings)
        expected = local.objects(subjects)
        assert finder.objects(subjects) == expected, subjects
        assert finder.objects_scanned == local.objects_scanned == 5
    # The shared device (Bob with Alice's phone) and the empty userId ("" reads as none).
    everything = Subjects(frozenset({ALICE}), linked=frozenset({PHONE}))
    found = make_finder(aws, s3, settings).objects(everything)
    assert len(found) == 3 and not any("hour=12" in key for key in found)
