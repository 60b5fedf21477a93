"""Deduplication: pure functions over Arrow tables, which copy of an event stays.

Copies of one event share `columns.DEDUP_KEY`. Within what one merge reads, per key, the copy
with the earliest `received_at` stays, then the lowest ORDER (its input object's place in key
order, then its row's place in the object); rows without a `message_id` all stay. A key stored
before (in a compacted object of the DEDUP_WINDOW's earlier hours) drops every copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from shared.archive.columns import DEDUP_KEY

ORDER = "_order"  # a row's input object (high 32 bits) and place in it: the tie-break


def with_order(rows: pa.Table, ordinal: int) -> pa.Table:
    """`rows` of the input at `ordinal` (its place in key order), with their tie-break."""
    base = ordinal << 32
    return rows.append_column(ORDER, pa.array(range(base, base + rows.num_rows), pa.int64()))


# Given a table of `DEDUP_KEY` columns, the places in it of the rows whose key is stored
# before (in the DEDUP_WINDOW's compacted hours), in any order.
StoredBefore = Callable[[pa.Table], pa.Array]


def first_copies(
    rows: pa.Table, drop: pa.Table | None = None, *, stored_before: StoredBefore | None = None
) -> pa.Table:
    """One row per `DEDUP_KEY` (the earliest `received_at`, then the lowest ORDER), and every
    row without a `message_id`; less the rows whose key is stored before: in `drop` (a table of
    the key's columns) or where `stored_before` says. Sorted by `received_at`, then ORDER. The
    rows are copied once, by the final `take`: only the keys are sorted."""
    order = pc.sort_indices(rows, [("received_at", "ascending", "at_end"), (ORDER, "ascending")])
    keys = rows.select(DEDUP_KEY).take(order)
    positions = pa.array(range(keys.num_rows), pa.int64())
    firsts = first_positions(keys, drop, stored_before=stored_before)
    keep = pc.or_(pc.is_in(positions, value_set=firsts), pc.invert(pc.is_valid(keys["message_id"])))
    return rows.take(order.filter(keep))


def first_positions(
    keys: pa.Table, earlier: pa.Table | None = None, *, stored_before: StoredBefore | None = None
) -> pa.Array:
    """The place in `keys` (`DEDUP_KEY` columns, in order of precedence) of the first row of
    each key with a `message_id`, except the keys stored before (in `earlier`, or where
    `stored_before` places them): no row of theirs is first."""
    own = keys.select(DEDUP_KEY)
    ranked = own.append_column("rank", pa.array(range(own.num_rows), pa.int64()))
    firsts = (
        ranked.filter(pc.is_valid(ranked["message_id"]))
        .group_by(list(DEDUP_KEY), use_threads=False)  # NULL sources form one group
        .aggregate([("rank", "min")])["rank_min"]
        .combine_chunks()
    )
    del ranked
    if earlier is not None:
        stored_before = functools.partial(stored_positions, stored=earlier)
    if stored_before is None or not len(firsts):
        return firsts
    stored = stored_before(own)
    return firsts.filter(pc.invert(pc.is_in(firsts, value_set=stored)))


def stored_positions(keys: pa.Table, stored: pa.Table) -> pa.Array:
    """The places in `keys` of the rows whose key (`DEDUP_KEY`) `stored` holds; a row without a
    `message_id` is never stored. Matched by `message_id` first (a hash set of `stored`'s IDs),
    then exactly, NULL sources matching each other, among the few rows whose ID is there."""
    stored_ids = stored["message_id"].cast(pa.string())
    maybe = pc.is_in(keys["message_id"], value_set=stored_ids, skip_nulls=True)
    places = pc.indices_nonzero(maybe.fill_null(False)).cast(pa.int64())
    if not len(places):
        return places
    near = keys.select(DEDUP_KEY).take(places)
    twins = stored.filter(pc.is_in(stored_ids, value_set=near["message_id"].combine_chunks()))
    found = (
        _exact_keys(near)
        .append_column("place", places)
        .join(_exact_keys(twins), keys=["source", "anonymous", "message_id"], join_type="left semi")
    )
    return found["place"].combine_chunks()


def _exact_keys(keys: pa.Table) -> pa.Table:
    """`DEDUP_KEY` as join keys without NULLs, so that a join matches NULL sources together,
    as the group-by does: the source (empty when NULL) and whether it is NULL."""
    source = keys["source"].cast(pa.string())
    return pa.table(
        {
            "source": source.fill_null(""),
            "anonymous": source.is_null(),
            "message_id": keys["message_id"].cast(pa.string()),
        }
    )
