"""Whose events a deletion removes, and how a row or an event is matched.

The subjects of every pending deletion are handled together (one pass): the `userId`s and
`anonymousId`s the regulations name, and the anonymous IDs the archive links to those userIds
(`linked`: an event carrying both, such as the `identify` at login, or an `alias` whose
`previousId` it is), one level deep. A linked anonymous ID's event is removed when it carries
no userId or the subject's own; with another userId (a shared device) it stays, and is
counted. IDs compare as the archive's text columns read them (`shared.values.as_text`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from shared.regulations import Regulation
from shared.values import as_text


@dataclass(frozen=True)
class Subjects:
    user_ids: frozenset[str] = frozenset()
    anonymous_ids: frozenset[str] = frozenset()
    linked: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, regulations: Iterable[Regulation]) -> Subjects:
        users, anonymous, linked = set(), set(), set()
        for regulation in regulations:
            named = users if regulation.field_name == "userId" else anonymous
            named.update(regulation.subject_ids)
            linked.update(regulation.linked_ids)
        return cls(frozenset(users), frozenset(anonymous), frozenset(linked - anonymous))

    @property
    def empty(self) -> bool:
        return not (self.user_ids or self.anonymous_ids)

    def with_links(self, linked: Iterable[str]) -> Subjects:
        """These subjects and the anonymous IDs `linked` to them, beside those known already."""
        found = (self.linked | frozenset(linked)) - self.anonymous_ids
        return Subjects(self.user_ids, self.anonymous_ids, found)

    # --- rows of the archive as a table (`columns.SCHEMA`) ----------------------------------

    def removed(self, rows: pa.Table) -> pa.Array:
        """Per row, whether it is a subject's event."""
        by_user = _in(rows["user_id"], self.user_ids)
        by_anonymous = _in(rows["anonymous_id"], self.anonymous_ids)
        linked = pc.and_(
            _in(rows["anonymous_id"], self.linked),
            pc.or_(pc.invert(pc.is_valid(rows["user_id"])), by_user),
        )
        return pc.or_(pc.or_(by_user, by_anonymous), linked)

    def shared_devices(self, rows: pa.Table) -> int:
        """Rows of a linked anonymous ID carrying another userId: kept, and counted."""
        other_user = pc.and_(
            pc.is_valid(rows["user_id"]), pc.invert(_in(rows["user_id"], self.user_ids))
        )
        return pc.sum(pc.and_(_in(rows["anonymous_id"], self.linked), other_user)).as_py() or 0

    # --- events as sent (NDJSON lines, dead letters, stream entries) ------------------------

    def matches(self, event: dict[str, Any]) -> bool:
        user, anonymous = _id(event.get("userId")), _id(event.get("anonymousId"))
        if user is not None and user in self.user_ids:
            return True
        if anonymous is None:
            return False
        if anonymous in self.anonymous_ids:
            return True
        return anonymous in self.linked and user is None

    def mentions(self, raw: bytes) -> bool:
        """Whether the text of one of the IDs (linked ones included) occurs in `raw`: how bytes
        that cannot be decoded are searched."""
        pattern = _id_pattern(self)
        return pattern is not None and pattern.search(raw) is not None

    def shared_device(self, event: dict[str, Any]) -> bool:
        """A linked anonymous ID's event under another userId: kept, and counted."""
        user, anonymous = _id(event.get("userId")), _id(event.get("anonymousId"))
        return anonymous in self.linked and user is not None and user not in self.user_ids


def without_pending(rows: pa.Table, pending: Iterable[Regulation]) -> pa.Table:
    """`rows` less the events that pending deletions remove (their linked anonymous IDs found
    in these rows, as the deletion finds them in the archive): what a reader shows from the
    moment a deletion is accepted, before it is carried out."""
    pending = list(pending)
    if not pending:
        return rows
    linking = frozenset(
        i for r in pending if r.linked and r.field_name == "userId" for i in r.subject_ids
    )
    subjects = Subjects.of(pending).with_links(links_in(rows, linking))
    return rows.filter(pc.invert(subjects.removed(rows)))


def links_in(rows: pa.Table, user_ids: frozenset[str]) -> set[str]:
    """The anonymous IDs `rows` link to `user_ids`: beside one in an event, or an alias's
    `previousId`."""
    if not user_ids:
        return set()
    own = rows.filter(_in(rows["user_id"], user_ids))
    found = set(own["anonymous_id"].drop_null().to_pylist())
    aliases = own.filter(pc.equal(own["type"], "alias"))
    found.update(aliases["previous_id"].drop_null().to_pylist())
    found.discard("")
    return found


@functools.lru_cache(maxsize=4)
def _id_pattern(subjects: Subjects) -> re.Pattern[bytes] | None:
    ids = subjects.user_ids | subjects.anonymous_ids | subjects.linked
    if not ids:
        return None
    # Longest first, so that an ID that another one starts with does not hide it.
    texts = sorted((re.escape(text.encode()) for text in ids), key=len, reverse=True)
    return re.compile(b"|".join(texts))


def _in(column: pa.ChunkedArray | pa.Array, ids: frozenset[str]) -> pa.Array:
    if not ids:
        return pa.array([False] * len(column), pa.bool_())
    value_set = pa.array(sorted(ids), pa.string())
    return pc.fill_null(pc.is_in(column.cast(pa.string()), value_set=value_set), False)


def _id(value: Any) -> str | None:
    """An ID as the archive's text column holds it; empty is none."""
    if value is None or value == "":
        return None
    return as_text(value)
