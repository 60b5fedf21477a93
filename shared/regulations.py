"""Privacy regulations (GDPR article 17, CCPA): the requests to forget or stop collecting from a
person, and the suppression set that ingest and the consumer check events against.

One module that imports neither the stream side nor the archive side, so that ingest can use it:
- a `Regulation` is what was asked (Segment's four kinds, up to MAX_SUBJECTS `userId`s or
  `anonymousId`s), when it was accepted, its state and its progress;
- subjects are compared as keyed hashes (`subject_hash`: HMAC-SHA256 with the deployment's
  privacy key), so that the copies a regulation leaves behind (the suppression set in Redis, a
  finished deletion's audit record) keep no ID in clear; an event's ID is hashed the same way
  to be checked;
- `PrivacyView` is what a process knows of the regulations in force: the hashes of suppressed
  subjects (ingest drops their events) and of pending deletions' subjects (the consumer drops
  those too, so nothing that slipped through is archived). It is read from one Redis hash,
  `<STREAM_KEY>:privacy`, reloaded at most every SUPPRESSION_RELOAD_S; the bucket holds the
  regulations themselves, and Redis only this copy, which the consumer rebuilds when it is
  missing (shared/archive/privacy/).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.values import as_text

# Segment's regulation types: what each does.
DELETE_ONLY = "DELETE_ONLY"
SUPPRESS_ONLY = "SUPPRESS_ONLY"
SUPPRESS_WITH_DELETE = "SUPPRESS_WITH_DELETE"
UNSUPPRESS = "UNSUPPRESS"
DELETES = frozenset({DELETE_ONLY, SUPPRESS_WITH_DELETE})
SUPPRESSES = frozenset({SUPPRESS_ONLY, SUPPRESS_WITH_DELETE})
TYPES = (DELETE_ONLY, SUPPRESS_ONLY, SUPPRESS_WITH_DELETE, UNSUPPRESS)
# The event field each subject type names (ANONYMOUS_ID is our extension of Segment's API).
SUBJECT_FIELDS = {"USER_ID": "userId", "ANONYMOUS_ID": "anonymousId"}
MAX_SUBJECTS = 5000

# A regulation's state, and Segment's name for it (`overallStatus` of its Public API).
PENDING, RUNNING, FINISHED, FAILED = "pending", "running", "finished", "failed"
SEGMENT_STATUS = {
    PENDING: "INITIALIZED",
    RUNNING: "RUNNING",
    FINISHED: "FINISHED",
    FAILED: "FAILED",
}

# The Redis hash of what is in force: `key` (the privacy key, hex), `s:<hash>` (a suppressed
# subject) and `d:<hash>` (a subject of a pending deletion), each valued with its regulation.
VIEW_KEY_SUFFIX = ":privacy"
KEY_FIELD = b"key"
SUPPRESSED, DELETING = "s:", "d:"


class BadRegulation(ValueError):
    """A regulation that cannot be accepted; `code` is the API's error code."""

    def __init__(self, message: str, code: str = "invalid_regulation") -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Regulation:
    """One request, as stored under the bucket's `_privacy/regulations/`."""

    id: str
    type: str
    subject_type: str
    # In clear only while a deletion needs them to find the subject's events; a finished
    # regulation keeps `subject_hashes` alone (what proves what was done, and what suppression
    # matches).
    subject_ids: list[str]
    subject_hashes: list[str]
    accepted_at: str  # ISO 8601, UTC: a deletion covers events received up to this moment
    linked: bool = True  # also delete the anonymousIds the archive links to a userId
    # The anonymousIds found linked so far, kept (in clear, like the subjects) until the
    # deletion finishes: a later pass no longer finds the events that linked them.
    linked_ids: list[str] = field(default_factory=list)
    state: str = PENDING
    finished_at: str | None = None
    error: str | None = None
    progress: dict[str, int] = field(default_factory=dict)
    # Objects that held the subject but could not be decoded: for a person to decide.
    undecodable: list[str] = field(default_factory=list)

    @property
    def field_name(self) -> str:
        return SUBJECT_FIELDS[self.subject_type]

    @property
    def deletes(self) -> bool:
        return self.type in DELETES

    @property
    def suppresses(self) -> bool:
        return self.type in SUPPRESSES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> Regulation:
        return cls(**document)

    def forget_ids(self) -> None:
        """Keep no ID in clear once nothing needs them (a finished deletion; a suppression,
        which matches by hash alone)."""
        self.subject_ids = []
        self.linked_ids = []


def subject_hash(key: bytes, field_name: str, subject_id: str) -> str:
    """The keyed hash a subject is known by: the event field it is in, and its ID as the
    archive's text column reads it (`123` and `"123"` alike)."""
    message = f"{field_name}\0{subject_id}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def new_key() -> bytes:
    return secrets.token_bytes(32)


def new_regulation(
    key: bytes,
    regulation_type: Any,
    subject_type: Any,
    subject_ids: Any,
    *,
    linked: bool = True,
    now: datetime | None = None,
) -> Regulation:
    """A regulation accepted now; BadRegulation (changing nothing) for bad input."""
    ids = check_request(regulation_type, subject_type, subject_ids)
    now = now or datetime.now(UTC)
    field_name = SUBJECT_FIELDS[subject_type]
    regulation = Regulation(
        id=f"{now:%Y%m%dT%H%M%S}-{secrets.token_hex(4)}",
        type=regulation_type,
        subject_type=subject_type,
        subject_ids=ids,
        subject_hashes=[subject_hash(key, field_name, i) for i in ids],
        accepted_at=now.isoformat(timespec="milliseconds"),
        linked=linked and subject_type == "USER_ID",
    )
    if not regulation.deletes:  # suppression matches by hash: nothing to keep in clear
        regulation.state, regulation.finished_at = FINISHED, regulation.accepted_at
        regulation.forget_ids()
    return regulation


def check_request(regulation_type: Any, subject_type: Any, subject_ids: Any) -> list[str]:
    """The subject IDs of a valid request, each once in the order given; BadRegulation names
    what is wrong."""
    if regulation_type not in TYPES:
        raise BadRegulation(f"regulationType must be one of {', '.join(TYPES)}")
    if subject_type not in SUBJECT_FIELDS:
        raise BadRegulation(f"subjectType must be one of {', '.join(SUBJECT_FIELDS)}")
    if not isinstance(subject_ids, list) or not subject_ids:
        raise BadRegulation("subjectIds must be a list of one or more IDs")
    if len(subject_ids) > MAX_SUBJECTS:
        raise BadRegulation(f"at most {MAX_SUBJECTS} subjectIds in one regulation")
    for position, subject in enumerate(subject_ids):
        if not isinstance(subject, str) or not subject.strip():
            raise BadRegulation(f"subjectIds[{position}] is not a non-empty string")
    return list(dict.fromkeys(subject_ids))  # once each, in the order given


# --- what is in force -----------------------------------------------------------------------


@dataclass(frozen=True)
class PrivacyView:
    """The subjects whose events are not to be stored, as keyed hashes."""

    key: bytes | None = None
    suppressed: frozenset[str] = frozenset()
    deleting: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.suppressed or self.deleting)

    def suppresses(self, event: dict[str, Any]) -> bool:
        """Whether ingest drops `event` (its userId or anonymousId is suppressed)."""
        return bool(self.suppressed) and self._matches(event, self.suppressed)

    def drops(self, event: dict[str, Any]) -> bool:
        """Whether the consumer drops `event`: suppressed, or a subject of a pending deletion
        (received before it was accepted: deleted; after: not to be archived either)."""
        if self.empty:
            return False
        return self._matches(event, self.suppressed) or self._matches(event, self.deleting)

    def _matches(self, event: dict[str, Any], hashes: frozenset[str]) -> bool:
        for field_name in ("userId", "anonymousId"):
            value = event.get(field_name)
            if value is None or value == "":
                continue
            if subject_hash(self.key, field_name, as_text(value)) in hashes:
                return True
        return False


def view_key(stream_key: str) -> str:
    return f"{stream_key}{VIEW_KEY_SUFFIX}"


def parse_view(raw: dict[bytes, bytes]) -> PrivacyView | None:
    """The Redis hash as a view; None when Redis holds none (never written, or lost)."""
    key = raw.get(KEY_FIELD)
    if key is None:
        return None
    suppressed, deleting = set(), set()
    for name in raw:
        text = name.decode()
        if text.startswith(SUPPRESSED):
            suppressed.add(text[len(SUPPRESSED) :])
        elif text.startswith(DELETING):
            deleting.add(text[len(DELETING) :])
    return PrivacyView(bytes.fromhex(key.decode()), frozenset(suppressed), frozenset(deleting))


def view_fields(key: bytes, regulations: Iterable[Regulation]) -> dict[str, str]:
    """The Redis hash that `regulations` (oldest first) put in force: a suppression holds until
    a later UNSUPPRESS names its subject; a deletion's subjects until it finishes."""
    fields: dict[str, str] = {KEY_FIELD.decode(): key.hex()}
    for regulation in regulations:
        for hashed in regulation.subject_hashes:
            if regulation.suppresses:
                fields[SUPPRESSED + hashed] = regulation.id
            elif regulation.type == UNSUPPRESS:
                fields.pop(SUPPRESSED + hashed, None)
            if regulation.deletes and regulation.state in (PENDING, RUNNING, FAILED):
                fields[DELETING + hashed] = regulation.id
    return fields


class CachedView:
    """A process's copy of the view, read again at most every `reload_s` (ingest answers from
    memory; a change reaches every process within `reload_s`). Redis unreachable or the view
    missing keep the last copy: a suppression, once seen, is never forgotten by an outage."""

    def __init__(
        self, read: Callable[[], dict[bytes, bytes]], reload_s: float, clock=time.monotonic
    ) -> None:
        self._read = read
        self._reload_s = reload_s
        self._clock = clock
        self._view = PrivacyView()
        self._read_at: float | None = None
        self._lock = threading.Lock()

    @classmethod
    def of_redis(cls, client: Callable[[], Any], stream_key: str, reload_s: float) -> CachedView:
        """The view in Redis's `<stream_key>:privacy`, read through `client()` (the process's
        current client: made at the first request, or replaced after a failover)."""
        name = view_key(stream_key)
        return cls(lambda: client().hgetall(name), reload_s)

    def current(self) -> PrivacyView:
        """The view, read again when it is `reload_s` old. While one thread reads it, the
        others go on with the last copy; before the first read ends, they wait for it: the
        empty view a process starts with is not a copy of anything (it let the events of a
        suppressed subject through while the first read was under way)."""
        if self._fresh(self._clock()):
            return self._view
        if not self._lock.acquire(blocking=self._read_at is None):
            return self._view  # another thread is reading the next copy
        try:
            now = self._clock()
            if not self._fresh(now):
                try:
                    found = parse_view(self._read())
                except Exception:  # Redis away: the request goes on, with what was known
                    found = None
                if found is not None:
                    self._view = found
                self._read_at = now
        finally:
            self._lock.release()
        return self._view

    def _fresh(self, now: float) -> bool:
        return self._read_at is not None and now - self._read_at < self._reload_s
