"""The consumer's side: one consumer's view of the stream through a consumer group.

`GroupReader` reads its own pending entries and new ones, acknowledges (deleting what only
its group needed, through the ledger's scripts), trims what every group has acknowledged,
takes over the entries of consumers gone idle (IDs only, a page at a time inside Redis, under
a lease), keeps its own alive while it retries storage, and sets aside entries that can never
be archived (`dead_letters`). Commands that need memory stay off this path, so consumers can
always drain a full Redis. May touch: Redis (the stream key, its group, ledger and
dead-letter stream).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from shared.stream import dead_letters, ledger
from shared.stream.entries import Entry, EntryId, Fields, id_key, next_id

log = logging.getLogger(__name__)


# A consumer may be forgotten only while it holds nothing: deleting one with pending entries
# would drop them from the group for good. Checked and done atomically, for every consumer
# idle longer than ARGV[2] except the caller.
_DELETE_IDLE_EMPTY_CONSUMERS = """
local deleted = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2]) and info['name'] ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return deleted
"""

# One entry's size, its fields' names and values, measured inside Redis: an entry too large
# for the consumer is never sent to it. False if its data is gone. KEYS: the stream.
_ENTRY_SIZE = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then return false end
local size = 0
for _, part in ipairs(entries[1][2]) do size = size + #part end
return size
"""

# Move one page of consumer ARGV[2]'s pending entries, those with IDs in ARGV[6] .. + idle for
# at least ARGV[4] ms, to consumer ARGV[3] (to itself: their idle clocks restart), IDs only
# (JUSTID). At most ARGV[5] of them, so that Redis is busy a few milliseconds per call, and
# without sending their IDs: the reply is {how many moved, the last ID looked at}, or {0} when
# none are left. ARGV[7], unless empty, sets their delivery counts (RETRYCOUNT). KEYS: the
# stream; ARGV[1]: the group.
_MOVE_PENDING_PAGE = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[6], '+', ARGV[5], ARGV[2])
if #rows == 0 then return {0} end
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[3], ARGV[4]}
for _, row in ipairs(rows) do claim[#claim + 1] = row[1] end
if ARGV[7] ~= '' then
  claim[#claim + 1] = 'RETRYCOUNT'
  claim[#claim + 1] = ARGV[7]
end
claim[#claim + 1] = 'JUSTID'
return {#redis.call(unpack(claim)), rows[#rows][1]}
"""
# Entries per _MOVE_PENDING_PAGE call: 4 to 10 ms of Redis's time (100,000 in one XCLAIM took
# it 0.4 s, in one script 0.9 s, while ingest waited), well below what Lua's unpack takes.
CLAIM_PAGE = 1000


@dataclass
class GroupReader:
    """One consumer's view of the stream through a consumer group."""

    client: redis.Redis
    key: str
    group: str
    consumer: str
    # The dead-letter stream keeps this many; older ones stay as their copies under errors/.
    dead_letter_max_len: int = 10_000

    def __post_init__(self) -> None:
        self._forget_idle = self.client.register_script(_DELETE_IDLE_EMPTY_CONSUMERS)
        self._entry_size = self.client.register_script(_ENTRY_SIZE)
        self._copy_to_dead_letters = self.client.register_script(dead_letters.COPY_TO_DEAD_LETTERS)
        self._move_pending_page = self.client.register_script(_MOVE_PENDING_PAGE)
        self._ack_and_delete = self.client.register_script(ledger.ACK_AND_DELETE)
        self._trim_below = self.client.register_script(ledger.TRIM_BELOW)
        self.keys = ledger.accounting_keys(self.key)

    def ensure_group(self) -> None:
        """Create the group at the start of the stream (not `$`), so entries written before
        any consumer ever ran are archived too. Looked up first: Redis refuses XGROUP CREATE
        when it is out of memory, even for a group that exists. The consumer's scripts are
        loaded here too, at the start of each invocation: Redis 6.2 cannot load one first
        used once it is full, and a full Redis is when acknowledging must still work."""
        self._load_scripts()
        if self.client.exists(self.key) and any(
            group["name"] in (self.group, self.group.encode())
            for group in self.client.xinfo_groups(self.key)
        ):
            return
        try:
            self.client.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _load_scripts(self) -> None:
        scripts = (
            self._forget_idle,
            self._entry_size,
            self._copy_to_dead_letters,
            self._move_pending_page,
            self._ack_and_delete,
            self._trim_below,
        )
        try:
            for script in scripts:
                self.client.script_load(script.script)
        except redis.exceptions.OutOfMemoryError as exc:  # already full: each call tries again
            log.warning("could not load the consumer's scripts into a full Redis: %s", exc)

    def read_pending(self, after: EntryId, count: int) -> list[Entry]:
        """This consumer's own delivered-but-unacknowledged entries with IDs above `after`."""
        return self._read(after, count, block_ms=None)

    def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Entries never delivered to any consumer of the group, waiting up to `block_ms`."""
        return self._read(b">", count, block_ms=block_ms)

    def _read(self, start: EntryId, count: int, block_ms: int | None) -> list[Entry]:
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.key: start}, count=count, block=block_ms
        )
        return reply[0][1] if reply else []

    def pending_deliveries(self, after: EntryId, count: int) -> list[tuple[EntryId, int]]:
        """Up to `count` of this consumer's own pending entries with IDs above `after`, in ID
        order, each with how often it was delivered: IDs only (XPENDING), no data, so that
        what to read, and how, is decided before anything is read."""
        rows = self.client.xpending_range(
            self.key, self.group, b"(" + after, "+", count, consumername=self.consumer
        )
        return [(row["message_id"], row["times_delivered"]) for row in rows]

    def entry_size(self, entry_id: EntryId) -> int | None:
        """The bytes of one entry's fields (names and values), measured inside Redis without
        sending them; None if its data is gone."""
        return self._entry_size(keys=[self.key], args=[entry_id])

    def dead_letter_unread(self, entry_id: EntryId, reason: str) -> bool:
        """`dead_letter` for an entry too large to read: Redis copies it into the dead-letter
        stream itself, then it is acknowledged. Called, like `dead_letter`, once its record
        (without the data) is under `errors/`. Returns whether the dead letter keeps the
        data: not when Redis is too full for it, nor on a cluster where the dead-letter stream
        lies in another slot than the stream (STREAM_KEY unsharded), since a script reaches
        one slot only; the entry is dropped then, as it can never be archived anyway."""
        if not dead_letters.copyable_in_redis(self.client, self.key):
            self.dead_letter(entry_id, None, f"{reason}; its data was dropped")
            return False
        kept = dead_letters.copy_unread(
            self._copy_to_dead_letters, self.key, entry_id, reason, self.dead_letter_max_len
        )
        self.ack([entry_id])
        return kept

    def idle_consumers(self, min_idle_ms: int) -> list[bytes]:
        """Other consumers not seen for over `min_idle_ms` (crashed, or hung) that hold
        pending entries."""
        me = self.consumer.encode()
        idle = []
        for info in self.client.xinfo_consumers(self.key, self.group):
            name = info["name"] if isinstance(info["name"], bytes) else info["name"].encode()
            if name != me and info["pending"] and info["idle"] > min_idle_ms:
                idle.append(name)
        return idle

    def claim_all_of(self, consumer: bytes, min_idle_ms: int) -> int:
        """Take over every pending entry of `consumer`; returns how many.

        IDs only (JUSTID), not their data, which could be more than the claimer can hold:
        they become its own pending entries, read like those (`read_pending`), a bounded
        read at a time, which counts their delivery (JUSTID does not). Nor is their list
        sent here: Redis pages through it itself (`_MOVE_PENDING_PAGE`), so that each reply
        is two values, however many the dead consumer held (up to 2 x FLUSH_MAX_EVENTS: one
        XPENDING reply listing 100,000 took 43 MiB of the claimer's memory).

        All of them, not entry by entry as each passes the idle time: re-staged together, in
        the order their first owner read them, they are cut into the same objects it stored
        before it died, so the retried flush overwrites those objects. Every entry of an idle
        consumer has been idle at least as long as the consumer, and claiming resets idle
        time, so two consumers never both win the same entry; and only the holder of a lease
        on them (redis-py's Lock, `min_idle_ms` long, renewed at each page) takes pages of
        them, so that two claimers never share them out page by page. A claimer that dies
        midway leaves the rest to be claimed once its lease ends: its own part and the rest
        are then stored apart (duplicates at worst, never a loss).
        """
        lease = self.client.lock(
            f"{self.key}:claiming:{consumer.decode()}", timeout=min_idle_ms / 1000, blocking=False
        )
        if not lease.acquire():
            return 0  # another consumer is taking them

        def still_held() -> bool:
            try:
                return lease.reacquire()
            except redis.exceptions.LockNotOwnedError:  # it paused for longer than the lease
                log.warning("lost the lease on the entries of %s while claiming them", consumer)
                return False  # what it claimed so far it holds, and stages like its own

        try:
            return self._move(consumer, self.consumer, min_idle_ms, None, still_held)
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lease.release()

    def _move(
        self,
        owner: bytes | str,
        to: str,
        min_idle_ms: int,
        retrycount: int | None,
        may_go_on: Callable[[], bool] = lambda: True,
    ) -> int:
        """Move `owner`'s pending entries to `to`, a page at a time (`_MOVE_PENDING_PAGE`),
        while `may_go_on()`; returns how many moved."""
        moved, after = 0, b"-"
        retry = "" if retrycount is None else retrycount
        while may_go_on():
            args = [self.group, owner, to, min_idle_ms, CLAIM_PAGE, after, retry]
            reply = self._move_pending_page(keys=[self.key], args=args)
            if len(reply) == 1:
                break
            moved += reply[0]
            after = b"(" + reply[1]
        return moved

    def delivery_counts(self, ids: list[EntryId]) -> dict[EntryId, int]:
        """How often each of these pending entries of this consumer has been delivered."""
        if not ids:
            return {}
        lowest, highest = min(ids, key=id_key), max(ids, key=id_key)
        # Other entries of this consumer may lie in the range too: ask for enough rows.
        rows = self.client.xpending_range(
            self.key, self.group, lowest, highest, len(ids) + 10_000, consumername=self.consumer
        )
        wanted = set(ids)
        return {
            row["message_id"]: row["times_delivered"] for row in rows if row["message_id"] in wanted
        }

    def forgive_own_pending(self) -> None:
        """Reset the delivery counts of everything this consumer holds, when the failure was
        not the entries' own (storage was down), so an outage never makes healthy entries
        look like poison."""
        self._claim_own_pending(retrycount=0)

    def keep_pending_alive(self) -> int:
        """Reset the idle time of everything this consumer holds, and its own: a consumer
        that retries storage reads nothing, and would look gone to the others after
        CLAIM_IDLE_MS. Delivery counts are unchanged. Returns how many entries it holds."""
        return self._claim_own_pending(retrycount=None)

    def _claim_own_pending(self, retrycount: int | None) -> int:
        # To itself, with JUSTID: the entries stay where they are, their clocks restart.
        return self._move(self.consumer, self.consumer, 0, retrycount)

    def forget_idle_consumers(self, min_idle_ms: int) -> int:
        """Remove consumers that went away holding nothing; returns how many."""
        return self._forget_idle(keys=[self.key], args=[self.group, min_idle_ms, self.consumer])

    def ack(self, ids: Iterable[EntryId]) -> int:
        ids = list(ids)
        return sum(
            self._ack_and_delete(keys=self.keys, args=[self.group, *ids[i : i + ledger.ACK_CHUNK]])
            for i in range(0, len(ids), ledger.ACK_CHUNK)
        )

    def dead_letter(self, entry_id: EntryId, fields: Fields | None, reason: str) -> None:
        """Move one entry that can never be archived aside, so it stops blocking the rest and
        stays inspectable. Called once its copy is stored under `errors/` in the bucket, so
        that trimming the dead-letter stream to its bound loses no record of it; if
        Redis is too full for the dead-letter stream, that copy is the record, since holding
        the entry would stop trimming and keep Redis full. A crash in between leaves the
        entry pending, to be dead-lettered again (a duplicate, never a loss)."""
        dead_letters.append(
            self.client, self.key, entry_id, fields, reason, self.dead_letter_max_len
        )
        self.ack([entry_id])

    def trim_acknowledged(self) -> int:
        """Drop history that every group has acknowledged, and nothing else.

        Everything below the oldest entry still pending, or not yet delivered, in any group
        is done with. Trimming by length instead (MAXLEN) would delete unread entries.
        """
        floor = self._oldest_needed_id()
        if floor is None:
            return 0
        # Exact, not approximate (~): the stream's length is what admission control counts.
        removed, more = 0, True
        while more:
            trimmed, more = self._trim_below(keys=self.keys, args=[floor, ledger.TRIM_CHUNK])
            removed += trimmed
        return removed

    def _oldest_needed_id(self) -> EntryId | None:
        floors = []
        for group in self.client.xinfo_groups(self.key):
            if group["pending"]:
                floors.append(self.client.xpending(self.key, group["name"])["min"])
            else:
                floors.append(next_id(group["last-delivered-id"]))
        return min(floors, key=id_key) if floors else None
