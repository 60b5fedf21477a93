"""The steps of one hour's compaction (plan, split, merge, commit), each resumable: see the
package's docstring for what each does and why a run killed anywhere resumes safely."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from tenacity import RetryError

from shared import retrying
from shared.archive import columns, reading
from shared.archive.compaction import window
from shared.archive.compaction.dedup import (
    ORDER,
    StoredBefore,
    first_copies,
    first_positions,
    stored_positions,
    with_order,
)
from shared.archive.compaction.locks import HourLock
from shared.archive.compaction.plan import Plan, make_plan, part_of_ids
from shared.archive.compaction.reports import HourResult, Summary
from shared.archive.formats import parquet
from shared.archive.naming import REASON_SUFFIX, Part, compacted_key, compacted_part, unreadable_key
from shared.archive.partitions import HOUR, hour_in, hour_label, partition_of
from shared.archive.reading import ArchivedObject, Damage
from shared.archive.storage import ObjectGone

if TYPE_CHECKING:
    from shared.archive.compaction.compactor import Budget, Compactor

log = logging.getLogger(__name__)

# Downloads in flight at once within a step.
READ_THREADS = 8
_SPILL_SCHEMA = columns.SCHEMA.append(pa.field(ORDER, pa.int64()))
_IPC = pa.ipc.IpcWriteOptions(compression="zstd")

T = TypeVar("T")


def parquet_bytes(rows: pa.Table) -> bytes:
    """A compacted object: the archive's Parquet, declared sorted by time. The same rows
    always give the same bytes."""
    return parquet.write(rows, sorted_by_time=True)


def _ipc_bytes(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _SPILL_SCHEMA, options=_IPC) as writer:
        writer.write_table(rows.cast(_SPILL_SCHEMA))
    return sink.getvalue().to_pybytes()


def _parallel(function: Callable[[Any], T], items: list[Any]) -> list[T]:
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(READ_THREADS, len(items)), thread_name_prefix="compact") as pool:
        return list(pool.map(function, items))


class HourRun:
    """One run's work on one locked hour: plan (or find the plan), then its steps."""

    def __init__(
        self,
        compactor: Compactor,
        hour: datetime,
        lock: HourLock,
        budget: Budget,
        summary: Summary,
        result: HourResult,
        report: Callable[[str], None],
    ) -> None:
        self.c = compactor
        self.store = compactor.store
        self.hour = hour
        self.lock = lock
        self.budget = budget
        self.summary = summary  # the run's: what it counts for the whole run (unreadable objects)
        self.result = result
        self.report = report
        self.work = f"{compactor.staging}work/{partition_of(hour)}"
        self._earlier: list[ArchivedObject] | None = None
        self._indexes: dict[int, dict[str, list[int]]] | None = None
        self._merged: dict[int, dict[str, Any]] = {}
        self._tally = threading.Lock()  # inputs are read, and set aside, by several threads

    def run(self) -> None:
        plan_key = f"{self.work}plan.json"
        done = set(self.store.keys_under(self.work))
        stored = self.store.get_json(plan_key) if plan_key in done else None
        if stored is None:
            self.store.delete(done)  # what a finished plan left behind
            plan = self.plan()
            if plan is None:
                self.result.state = "unchanged"
                return
            self.store.put_json(plan_key, asdict(plan))
            done = set()
        else:
            plan = Plan(**stored)
        batches = len(plan.batches)
        steps = [(f"split {i + 1}/{batches}", self.split, i) for i in range(batches)]
        steps += [(f"merge {b + 1}/{plan.parts}", self.merge, b) for b in range(plan.parts)]
        steps += [("commit", self.commit, 0)]
        for name, step, index in steps:
            if self.marker(plan, step, index) in done:
                continue
            self.budget.check()
            self.report(name)
            self.lock.renew()
            step(plan, index)
            self.result.steps += 1
        if not self.result.objects_written and not self.result.objects_removed:
            self.result.state = "unchanged"  # checked again, and nothing was to drop

    def marker(self, plan: Plan, step: Callable[..., None], index: int) -> str:
        """The object that says a step is done (the commit's never is: it runs every time)."""
        if step == self.split:
            return f"{self.work}{plan.id}/split-{index:05d}.json"
        if step == self.merge:
            return f"{self.work}{plan.id}/merge-{index:04d}.json"
        return f"{self.work}{plan.id}/committed"

    def staged(self, plan: Plan) -> list[str]:
        """Every object the plan's steps store under the work prefix."""
        keys = []
        for batch in range(len(plan.batches)):
            marker = self.marker(plan, self.split, batch)
            keys += [marker, marker.removesuffix(".json") + ".arrows"]
        return keys + [self.marker(plan, self.merge, part) for part in range(plan.parts)]

    # --- 1. plan ----------------------------------------------------------------------------

    def plan(self) -> Plan | None:
        c = self.c
        objects = reading.list_partition(self.store, c.prefix, self.hour.date(), self.hour.hour)
        rechecks = self.store.keys_under(f"{c.staging}recheck/{partition_of(self.hour)}")
        return make_plan(
            self.hour,
            objects,
            rechecks,
            object_bytes=c.object_bytes,
            step_bytes=c.step_bytes,
            window_h=c.settings.dedup_window_h,
        )

    def input(self, plan: Plan, index: int) -> ArchivedObject:
        return reading.archived_object(plan.inputs[index], plan.sizes[index])

    def read_inputs(self, plan: Plan, indexes: list[int]) -> list[pa.Table]:
        """The inputs' rows that decode, with their ORDER. An input that cannot all be decoded
        is set aside first (its rows that decode are merged like any others)."""

        def read(index: int) -> pa.Table:
            item = self.input(plan, index)
            rows, damage = reading.read_salvaging(self.store, item)
            if damage is not None:
                self.set_aside(item, damage)
            return with_order(rows, index)

        return _parallel(read, indexes)

    def set_aside(self, item: ArchivedObject, damage: Damage) -> None:
        """Copy an input that cannot all be decoded to `<prefix>_unreadable/`, its reason
        beside it, before the commit removes it with the other inputs: whenever a run dies,
        its bytes are in one place or both. A redone step writes the same two objects again."""
        target = unreadable_key(self.c.prefix, item.key)
        self.store.copy(item.key, target)
        reason = {
            "key": item.key,
            "format": item.format,
            "bytes": item.size,
            "reason": damage.reason,
            "failed_lines": list(damage.lines),
            "failed_line_count": damage.lines_failed,
            "failed_row_groups": list(damage.row_groups),
            "rows_read": damage.rows_read,
            "rows_kept_by": f"compaction of {hour_label(self.hour)}",
        }
        self.store.put_json(target + REASON_SUFFIX, reason)
        log.warning("set %s aside as %s: %s", item.key, target, damage.reason)
        with self._tally:
            self.summary.unreadable_objects += 1
            self.result.unreadable.append(item.key)

    # --- 2. split ---------------------------------------------------------------------------

    def split(self, plan: Plan, batch: int) -> None:
        rows = pa.concat_tables(self.read_inputs(plan, plan.batches[batch]))
        parts = part_of_ids(rows["message_id"], plan.parts)
        counts = [0] * plan.parts
        for part in parts:
            counts[part] += 1
        rows = rows.take(pc.sort_indices(pa.array(parts, pa.int32())))  # stable: keeps order
        chunks, index, offset, start = [], {}, 0, 0
        for part, count in enumerate(counts):
            if count:
                chunk = _ipc_bytes(rows.slice(start, count))
                index[str(part)] = [offset, len(chunk)]
                chunks.append(chunk)
                offset += len(chunk)
                start += count
        self.store.put(
            f"{self.work}{plan.id}/split-{batch:05d}.arrows", b"".join(chunks), parquet.CONTENT_TYPE
        )
        self.store.put_json(self.marker(plan, self.split, batch), index)

    def indexes(self, plan: Plan) -> dict[int, dict[str, list[int]]]:
        if self._indexes is None:
            keys = [self.marker(plan, self.split, i) for i in range(len(plan.batches))]
            found = _parallel(self.store.get_json, keys)
            if None in found:
                raise ObjectGone(keys[found.index(None)])
            self._indexes = dict(enumerate(found))
        return self._indexes

    # --- 3. merge ---------------------------------------------------------------------------

    def merge(self, plan: Plan, part: int) -> None:
        direct = plan.direct_inputs(part)
        ranges = [
            (f"{self.work}{plan.id}/split-{batch:05d}.arrows", index[str(part)])
            for batch, index in self.indexes(plan).items()
            if str(part) in index
        ]

        def stored_before(keys: pa.Table) -> pa.Array:
            return self.stored_earlier(plan, part, keys)

        outcome = None
        if not ranges and len(direct) == 1 and compacted_part(plan.inputs[direct[0]]):
            outcome = self.unchanged(plan, direct[0], stored_before)
        if outcome is None:
            outcome = self.rewrite(plan, part, direct, ranges, stored_before)
        self.result.events_read += outcome["rows_in"]
        self.result.events_written += outcome["rows_out"]
        self.store.put_json(self.marker(plan, self.merge, part), outcome)
        self._merged[part] = outcome

    def rewrite(
        self,
        plan: Plan,
        part: int,
        direct: list[int],
        ranges: list[tuple[str, list[int]]],
        stored_before: StoredBefore,
    ) -> dict[str, Any]:
        """The part's rows read, deduplicated, sorted and stored (unless stored already)."""
        tables = self.read_inputs(plan, direct) + _parallel(self.read_spill, ranges)
        rows = pa.concat_tables(tables) if tables else _SPILL_SCHEMA.empty_table()
        del tables
        rows_in = rows.num_rows
        kept = first_copies(rows, stored_before=stored_before)
        del rows  # before encoding: the peak is the inputs and their first copies, once
        key = None
        if kept.num_rows:
            body = parquet_bytes(kept)
            key = compacted_key(self.c.prefix, self.hour, Part(part, plan.parts), body)
            if key not in plan.inputs:  # else stored already, byte for byte
                self.store.put(key, body, parquet.CONTENT_TYPE)
                self.result.objects_written += 1
        return {"key": key, "rows_in": rows_in, "rows_out": kept.num_rows}

    def unchanged(self, plan: Plan, index: int, stored_before: StoredBefore) -> dict | None:
        """A part whose only input is its own compacted object, when none of its keys is
        stored earlier now (each of its rows with a `message_id` is still a first copy): it
        stays as it is, its key columns read only."""
        try:
            keys = window.read_keys(self.store, self.input(plan, index))
        except (OSError, pa.ArrowException):  # rewritten: reading it whole tells why
            return None
        keyed = keys.num_rows - keys["message_id"].null_count
        if len(first_positions(keys, stored_before=stored_before)) < keyed:
            return None
        return {"key": plan.inputs[index], "rows_in": keys.num_rows, "rows_out": keys.num_rows}

    def read_spill(self, spill: tuple[str, list[int]]) -> pa.Table:
        key, (offset, length) = spill
        body = self.store.get(key, (offset, offset + length - 1))
        rows = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        if rows.schema.equals(_SPILL_SCHEMA):
            return rows
        # A spill of a plan an older release began (fewer columns): its rows as this
        # release's, merged with the inputs this one reads (a resumed plan never fails on it).
        return columns.conform(rows).append_column(rows.schema.field(ORDER), rows[ORDER])

    def stored_earlier(self, plan: Plan, part: int, keys: pa.Table) -> pa.Array:
        """The places in `keys` (`DEDUP_KEY` columns) of the keys that a compacted object of
        the window's earlier hours stores (one that may hold `part`'s IDs). Their key columns
        are read one object at a time, a batch of at least `keys`' length at a time, so that
        memory holds `keys` and a batch, however many events the window holds; and each key
        of the window is looked up once, in a hash set of the batch's IDs."""
        # An earlier hour compacted again meanwhile (ObjectGone): list the window again.
        try:
            for attempt in retrying.relisting(ObjectGone, attempts=3):
                with attempt:
                    relist = attempt.retry_state.attempt_number > 1
                    return self._stored_in_window(plan, part, keys, relist)
        except RetryError:
            raise ObjectGone(
                f"the objects of the {plan.window_h} hours before kept changing"
            ) from None
        except reading.Unreadable as exc:
            raise self.salvage_later(exc) from exc

    def _stored_in_window(self, plan: Plan, part: int, keys: pa.Table, relist: bool) -> pa.Array:
        if self._earlier is None or relist:
            first = self.hour - plan.window_h * HOUR
            self._earlier = window.compacted_objects(
                self.store, self.c.prefix, first, self.hour - HOUR
            )
        overlapping = []
        for item in self._earlier:
            other = compacted_part(item.key)
            common = min(other.count, plan.parts)
            if other.index % common == part % common:
                overlapping.append(item)
        found = [pa.array([], pa.int64())]
        batch_rows = max(window.KEY_BATCH_ROWS, keys.num_rows)
        for stored in window.key_batches(self.store, overlapping, batch_rows):
            found.append(stored_positions(keys, stored))
        return pa.concat_arrays(found)

    def salvage_later(self, unreadable: reading.Unreadable) -> reading.Unreadable:
        """An earlier hour's compacted object whose keys cannot be read fails this hour (the
        keys it holds are unknown), and asks its own hour to be compacted again: that reads
        it whole, keeps what decodes and sets it aside, after which this hour goes through."""
        hour = hour_in(unreadable.key)
        digest = hashlib.blake2b(unreadable.key.encode(), digest_size=8).hexdigest()
        request = f"{self.c.staging}recheck/{partition_of(hour)}unreadable-{digest}.json"
        self.store.put_json(request, {"hour": hour_label(hour), "unreadable": unreadable.key})
        reason = f"{unreadable.damage.reason}; the next run compacts its hour again"
        damage = dataclasses.replace(unreadable.damage, reason=reason)
        return reading.Unreadable(unreadable.key, damage)

    # --- 4. commit --------------------------------------------------------------------------

    def commit(self, plan: Plan, _: int = 0) -> None:
        missing = [part for part in range(plan.parts) if part not in self._merged]
        found = _parallel(self.store.get_json, [self.marker(plan, self.merge, p) for p in missing])
        if None in found:
            raise ObjectGone("a merge marker of the plan being committed")
        self._merged.update(zip(missing, found, strict=True))
        outputs = {outcome["key"] for outcome in self._merged.values() if outcome["key"]}
        if plan.new_rows:
            self.ask_later_hours_to_recheck(plan)
        self.lock.renew()
        self.result.objects_removed += self.store.delete(
            key for key in plan.inputs if key not in outputs
        )
        # A request left (the plan gone) only costs a check; a plan left without its markers
        # would redo merges whose inputs are gone: the markers go last.
        self.store.delete([*plan.rechecks, f"{self.work}plan.json"])
        self.store.delete(self.staged(plan))

    def ask_later_hours_to_recheck(self, plan: Plan) -> None:
        """Later hours in the window that are compacted (or being compacted) may hold a copy
        of an event this plan merged, which now wins: ask them to check again."""
        last = self.hour + plan.window_h * HOUR
        listed = window.compacted_objects(self.store, self.c.prefix, self.hour + HOUR, last)
        later = {item.hour_start for item in listed}
        for key in self.store.keys_under(f"{self.c.staging}work/"):
            hour = hour_in(key)
            if key.endswith("/plan.json") and hour and self.hour < hour <= last:
                later.add(hour)
        for hour in sorted(later):
            name = f"{hour_label(self.hour)}-{plan.id}.json"
            key = f"{self.c.staging}recheck/{partition_of(hour)}{name}"
            self.store.put_json(key, {"hour": hour_label(self.hour), "plan": plan.id})
