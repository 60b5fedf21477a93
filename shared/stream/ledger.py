"""The byte ledger: the scripts that add and remove entries together with their accounting.

Admission counts bytes as well as entries: each stream key's size hash holds the bytes and
events of its entries, and its ledger one small record per entry (shards.size_key,
ledger_key). The scripts that add or remove entries update both in the same atomic step, so
the hash is exact for every entry appended since the ledger exists; entries appended by an
older release are not counted until they drain (the counters under-count, never over-count),
and an emptied stream starts its counters over from zero.

Script text and key names only: the producer (`producers`) and the consumer group
(`consumer_group`) register and run them. May touch: `shared.shards` for key names and
`shared.token_bucket` for its Lua.
"""

from __future__ import annotations

from shared import shards as shards_module
from shared import token_bucket

# Check and append in one atomic step: a check followed by a separate XADD would let concurrent
# requests overshoot the bounds. Capping by MAXLEN instead would delete unread entries.
# KEYS: the stream, its size hash and its ledger (shards.size_key, shards.ledger_key), then
# the token buckets the request takes from (shards.rate_bucket_key), if any.
# ARGV: STREAM_MAX_LEN, STREAM_MAX_BYTES, the request's events (what it takes from each
# bucket), each bucket's rate and burst (token_bucket.bucket_args), then the entry's fields as
# name, value pairs. A bucket short of tokens refuses first, with {'rate_limited', its index,
# the wait in microseconds}; its tokens are taken only once the entry is in.
# The entry's bytes are its fields' names and values; its events, its `n` field (codec). The
# entry goes first: at maxmemory Redis refuses a script's first write, never a later one.
# An empty stream holds nothing, so whatever its counters said was stale (entries removed
# around these scripts): they start again from this entry.
ADD_IF_ROOM = (
    token_bucket.LUA
    + """
local limited, cost = #KEYS - 3, tonumber(ARGV[3])
local first_field = 4 + 2 * limited
local now, buckets = 0, {}
if limited > 0 then
  local wait, which
  now = buckets_now()
  wait, which, buckets = buckets_check(3, 3, limited, cost, now)
  if which > 0 then return {'rate_limited', which, wait} end
end
local length = redis.call('XLEN', KEYS[1])
if length >= tonumber(ARGV[1]) then return false end
if (tonumber(redis.call('HGET', KEYS[2], 'bytes')) or 0) >= tonumber(ARGV[2]) then
  return false
end
local bytes, events = 0, 0
for i = first_field, #ARGV, 2 do
  bytes = bytes + #ARGV[i] + #ARGV[i + 1]
  if ARGV[i] == 'n' and string.match(ARGV[i + 1], '^%d+$') and #ARGV[i + 1] < 16 then
    events = tonumber(ARGV[i + 1])
  end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first_field))
if length == 0 then redis.call('DEL', KEYS[2], KEYS[3]) end
redis.call('XADD', KEYS[3], id, 'b', bytes, 'n', events)
redis.call('HINCRBY', KEYS[2], 'bytes', bytes)
redis.call('HINCRBY', KEYS[2], 'events', events)
buckets_take(buckets, cost, now)
return id
"""
)
# What removes entries takes their ledger records too (KEYS: the stream, its size hash, its
# ledger) and subtracts what those records added, so the size hash is always the sum of the
# ledger: what the entries admitted through ADD_IF_ROOM and still held add up to. Never an
# entry's data: reading it into Lua would cost Redis time in proportion to its size. Once the
# stream is empty, the counters and the ledger go (self-healing). Later writes of a script
# are never refused at maxmemory, so consumers can still free memory when Redis is full.
_SETTLE = """
local function forget(ids)
  local bytes, events = 0, 0
  for _, id in ipairs(ids) do
    local record = redis.call('XRANGE', KEYS[3], id, id)[1]
    if record then
      bytes = bytes + tonumber(record[2][2])
      events = events + tonumber(record[2][4])
      redis.call('XDEL', KEYS[3], id)
    end
  end
  return bytes, events
end
local function settle(bytes, events)
  if redis.call('XLEN', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2], KEYS[3])
    return
  end
  -- Never -0: Lua prints it as such, and HINCRBY refuses it.
  if bytes ~= 0 then redis.call('HINCRBY', KEYS[2], 'bytes', 0 - bytes) end
  if events ~= 0 then redis.call('HINCRBY', KEYS[2], 'events', 0 - events) end
end
"""

# Acknowledged entries are deleted at once when this group is the stream's only one, so the
# stream's length is exactly its backlog: one consumer's stale pending entry cannot hold
# thousands of acknowledged entries behind it (trimming by MINID stops at the oldest pending).
# ARGV: the group, then the entry IDs.
ACK_AND_DELETE = (
    _SETTLE
    + """
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 2))
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 1 then
  local info = {}
  for i = 1, #groups[1], 2 do info[groups[1][i]] = groups[1][i + 1] end
  if info['name'] == ARGV[1] then
    redis.call('XDEL', KEYS[1], unpack(ARGV, 2))
    local ids = {}
    for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
    settle(forget(ids))
  end
end
return acked
"""
)
# Lua's unpack takes at most about 8,000 values: acknowledge in chunks well below that.
ACK_CHUNK = 1000

# Remove the entries below ARGV[1] (exact MINID), at most ARGV[2] ledger records' worth per
# call, so that one call's work stays small; returns {entries removed, 1 if more remain}.
TRIM_BELOW = (
    _SETTLE
    + """
local chunk = tonumber(ARGV[2])
local records = redis.call('XRANGE', KEYS[3], '-', '(' .. ARGV[1], 'COUNT', chunk + 1)
local limit, more = ARGV[1], 0
if #records > chunk then
  limit, more = records[#records][1], 1
  records[#records] = nil
end
local bytes, events = 0, 0
for _, record in ipairs(records) do
  bytes = bytes + tonumber(record[2][2])
  events = events + tonumber(record[2][4])
end
local removed = redis.call('XTRIM', KEYS[1], 'MINID', limit)
redis.call('XTRIM', KEYS[3], 'MINID', limit)
settle(bytes, events)
return {removed, more}
"""
)
TRIM_CHUNK = 1000


def accounting_keys(stream_key: str) -> list[str]:
    """The stream key and the keys that account for its entries, in the order the scripts
    here take them as KEYS: the key, its size hash, its ledger."""
    return [stream_key, shards_module.size_key(stream_key), shards_module.ledger_key(stream_key)]
