"""Finding what a deletion must rewrite: which objects hold the subjects' events, and which
anonymous IDs the archive links to their userIds. Reads the identity columns only.

One interface (`finding.Finder`), two backends: locally the archive read into DuckDB as
`event-ingest query` does (`LocalFinder`, here); on AWS an Athena query over the template's
tables (`athena.AthenaFinder`), so that a large archive is searched by a distributed engine and
only what it found is rewritten. The interface lives apart so that what imports it (the
deletion pass, the privacy function) never reaches this module's DuckDB.
"""

from __future__ import annotations

import pyarrow as pa

from shared.archive.privacy.finding import Finder
from shared.archive.privacy.subjects import Subjects
from shared.archive.storage import ObjectStore

__all__ = ["Finder", "LocalFinder"]  # Finder: for those that imported it from here

_IDS = ("_user_ids", "_anonymous_ids", "_linked_ids")

_LINKED = """
SELECT anonymous_id AS id FROM raw_events
WHERE user_id IN (SELECT id FROM _user_ids) AND anonymous_id IS NOT NULL
UNION
SELECT previous_id FROM raw_events
WHERE type = 'alias' AND user_id IN (SELECT id FROM _user_ids) AND previous_id IS NOT NULL
"""
_OBJECTS = """
SELECT DISTINCT object_key FROM raw_events
WHERE user_id IN (SELECT id FROM _user_ids)
   OR anonymous_id IN (SELECT id FROM _anonymous_ids)
   OR (anonymous_id IN (SELECT id FROM _linked_ids)
       AND (user_id IS NULL OR user_id IN (SELECT id FROM _user_ids)))
"""


class LocalFinder:
    """The whole archive read once into DuckDB (the `query` extra), then asked in SQL; the IDs
    go in as tables, never into the SQL text."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        from shared.archive import query  # DuckDB: only where the local backend runs

        # An object that cannot be decoded fails the pass (`event-ingest compact` sets it aside,
        # and the next pass removes the subjects from what of it decodes, in `_unreadable/`):
        # skipped, its decodable lines would outlive a finished deletion.
        self.archive = query.open_archive(store, prefix)
        self.connection = self.archive.connection
        self.objects_scanned = len(self.archive.objects)

    def linked(self, user_ids: frozenset[str]) -> set[str]:
        self._register(Subjects(user_ids=user_ids))
        found = self.connection.sql(_LINKED).fetchall()
        return {row[0] for row in found if row[0]}

    def objects(self, subjects: Subjects) -> set[str]:
        self._register(subjects)
        return {row[0] for row in self.connection.sql(_OBJECTS).fetchall()}

    def _register(self, subjects: Subjects) -> None:
        sets = (subjects.user_ids, subjects.anonymous_ids, subjects.linked)
        for name, ids in zip(_IDS, sets, strict=True):
            self.connection.register(name, pa.table({"id": pa.array(sorted(ids), pa.string())}))

    def close(self) -> None:
        self.archive.close()
