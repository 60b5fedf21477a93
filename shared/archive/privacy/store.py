"""The regulations, kept in the bucket under `<S3_PREFIX>_privacy/` (outside every root: never
read as events), and the copy of what they put in force that Redis holds.

- `_privacy/key.json`: the privacy key (32 random bytes, hex) subjects are hashed with, made by the
  first regulation and never changed (every stored hash depends on it);
- `_privacy/regulations/<id>.json`: one document per regulation (`Regulation.as_dict`).

The bucket is the truth; Redis's `<STREAM_KEY>:privacy` hash is rebuilt from it whenever a
regulation changes, and by the consumer whenever it is missing (a Redis restarted empty, a
failover that lost it), before anything is archived.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from shared import regulations
from shared.archive.storage import ObjectStore
from shared.regulations import BadRegulation, PrivacyView, Regulation

log = logging.getLogger(__name__)

ROOT = "_privacy/"


class RegulationStore:
    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.root = f"{prefix}{ROOT}"
        self._key: bytes | None = None

    # --- the key ----------------------------------------------------------------------------

    def key(self) -> bytes:
        """The privacy key, made by the first caller that finds none (an object written only
        if absent, so that two first regulations at once agree on one key)."""
        if self._key is None:
            found = self.store.get_json(f"{self.root}key.json")
            if found is None:
                self._create_key()
                found = self.store.get_json(f"{self.root}key.json")
            self._key = bytes.fromhex(found["key"])
        return self._key

    def _create_key(self) -> None:
        # Another process that made it first wins: theirs stands.
        self.store.put_json_if_absent(f"{self.root}key.json", {"key": regulations.new_key().hex()})

    # --- regulations ------------------------------------------------------------------------

    def save(self, regulation: Regulation) -> None:
        self.store.put_json(self._path(regulation.id), regulation.as_dict())

    def get(self, regulation_id: str) -> Regulation:
        """The regulation; BadRegulation (code `not_found`) when there is none."""
        if not _plain_id(regulation_id):
            raise BadRegulation(f"no regulation {regulation_id!r}", code="not_found")
        document = self.store.get_json(self._path(regulation_id))
        if document is None:
            raise BadRegulation(f"no regulation {regulation_id!r}", code="not_found")
        return Regulation.from_dict(document)

    def all(self) -> list[Regulation]:
        """Every regulation, oldest first: by the millisecond each was accepted, since IDs
        sort by the second only (an UNSUPPRESS must follow the suppression it ends)."""
        keys = self.store.keys_under(f"{self.root}regulations/")
        found = [Regulation.from_dict(self.store.get_json(key)) for key in keys]
        return sorted(found, key=lambda regulation: regulation.accepted_at)

    def pending_deletions(self, found: Iterable[Regulation] | None = None) -> list[Regulation]:
        """The deletions not finished: of `found`, or of every regulation."""
        every = self.all() if found is None else found
        return [r for r in every if r.deletes and r.state != regulations.FINISHED]

    def drop_history(self, regulation_id: str) -> None:
        """Remove the earlier versions of a regulation's document (in a versioned bucket): a
        finished deletion's subjects must not stay in clear in them."""
        path = self._path(regulation_id)
        self.store.delete_versions(path, self.store.older_versions(path))

    def drop_finished_history(self, found: Iterable[Regulation]) -> None:
        """`drop_history` of each finished regulation of `found` that still has earlier
        versions (a deletion pass killed between finishing it and dropping them)."""
        finished = {self._path(r.id) for r in found if r.state == regulations.FINISHED}
        for version in list(self.store.versions_under(f"{self.root}regulations/")):
            if version.key in finished and not version.latest:
                self.store.delete_versions(version.key, [version.version_id])

    def _path(self, regulation_id: str) -> str:
        return f"{self.root}regulations/{regulation_id}.json"

    # --- the copy in Redis ------------------------------------------------------------------

    def publish(self, redis_client: Any, stream_key: str) -> PrivacyView:
        """Rebuild Redis's copy from the regulations, in one transaction."""
        return self.publish_from(redis_client, stream_key, self.all())

    def publish_from(
        self, redis_client: Any, stream_key: str, found: Iterable[Regulation]
    ) -> PrivacyView:
        fields = regulations.view_fields(self.key(), found)
        name = regulations.view_key(stream_key)
        pipe = redis_client.pipeline(transaction=True)
        pipe.delete(name).hset(name, mapping=fields).execute()
        encoded = {k.encode(): v.encode() for k, v in fields.items()}
        return regulations.parse_view(encoded)

    def publish_if_stale(
        self, redis_client: Any, stream_key: str, found: Iterable[Regulation]
    ) -> None:
        """Publish again when Redis's copy is not what `found` (every regulation) puts in force:
        a deletion pass killed between finishing a deletion and publishing."""
        fields = regulations.view_fields(self.key(), found)
        held = redis_client.hgetall(regulations.view_key(stream_key))
        if {name.decode(): value.decode() for name, value in held.items()} != fields:
            self.publish(redis_client, stream_key)

    def ensure_published(self, redis_client: Any, stream_key: str) -> PrivacyView:
        """Redis's copy, rebuilt first if it is missing. With no regulation in the bucket, the
        copy says that nothing is in force (a `key` field, empty) and the bucket is left as it
        is: a deployment that never had a regulation gets no privacy key."""
        name = regulations.view_key(stream_key)
        found = regulations.parse_view(redis_client.hgetall(name))
        if found is not None:
            return found
        log.warning("the privacy view is missing from Redis: rebuilding it from the bucket")
        every = self.all()
        if every:
            return self.publish_from(redis_client, stream_key, every)
        # Only if still missing: a first regulation published meanwhile stands.
        redis_client.hsetnx(name, regulations.KEY_FIELD, "")
        return regulations.parse_view(redis_client.hgetall(name)) or PrivacyView()

    def in_force(self) -> PrivacyView:
        """What the regulations put in force, written nowhere: for a Redis too full to hold
        it. No privacy key is made when there is no regulation."""
        found = self.all()
        if not found:
            return PrivacyView()
        fields = regulations.view_fields(self.key(), found)
        return regulations.parse_view({k.encode(): v.encode() for k, v in fields.items()})

    def accept(self, redis_client: Any, stream_key: str, **request: Any) -> Regulation:
        """A new regulation (`regulations.new_regulation`'s arguments), stored, then in force
        in Redis. Bad input raises BadRegulation before anything is written."""
        regulations.check_request(
            request.get("regulation_type"), request.get("subject_type"), request.get("subject_ids")
        )  # before the first regulation makes the key: bad input writes nothing
        # Redis away: refused before the bucket holds a regulation that Redis would not have in
        # force (a suppression not applied until the next regulation is published).
        redis_client.ping()
        regulation = regulations.new_regulation(self.key(), **request)
        self.save(regulation)
        self.publish(redis_client, stream_key)
        return regulation


def _plain_id(regulation_id: str) -> bool:
    """An ID as `new_regulation` makes them: never a path."""
    return (
        isinstance(regulation_id, str)
        and 0 < len(regulation_id) <= 64
        and all(c.isalnum() or c in "-T" for c in regulation_id)
    )
