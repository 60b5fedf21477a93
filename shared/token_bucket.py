"""Token buckets in Redis, counted in events: the `Bucket` a request takes from, and the Lua
that checks and takes buckets inside the stream's append script (shared/stream/ledger.py), so that a
request's limits cost no round trip of their own.

A bucket holds up to `burst` tokens and gains `events_per_s` a second. A request of n events
passes when every bucket it names holds at least min(n, burst) tokens, and then takes n from
each: a request larger than the burst is not refused for ever, it waits for a full bucket and
leaves it in debt, so the average rate holds whatever the request sizes. Tokens are taken only
when the entry is appended: a refused request (rate, backlog) costs nothing.

Each bucket is one Redis string, the time (microseconds, Redis's own clock: `TIME` inside the
script, which Redis 6.2 and 7 replicate as effects) at which it will be full again; it expires
then, so an idle bucket costs nothing, and a missing one is full. That is the whole state:
tokens(now) = burst - max(0, full_at - now) x events_per_s.
"""

from __future__ import annotations

from typing import NamedTuple

MICROS = 1_000_000


class Bucket(NamedTuple):
    """A token bucket, named for what it limits (`source:web`, `address:<digest>`): bounded
    names, never a raw address, since key names show in Redis's tooling. A tuple: one is made
    for every request."""

    name: str
    events_per_s: float
    burst: float

    def share(self, parts: int) -> Bucket:
        """This bucket's share when `parts` stream shards each keep one: requests take turns
        over the shards, so the shares add up to the whole."""
        if parts == 1:
            return self
        return Bucket(self.name, self.events_per_s / parts, self.burst / parts)


def bucket_args(buckets: tuple[Bucket, ...]) -> list[float]:
    """The script's arguments for `buckets`: each one's rate and burst, in order."""
    return [value for _, events_per_s, burst in buckets for value in (events_per_s, burst)]


# Functions for a script: `buckets_check(k, a, n, cost, now)` reads the n buckets KEYS[k + 1]
# ... KEYS[k + n], whose rate and burst are ARGV[a + 1], ARGV[a + 2], ... (`bucket_args`), and
# returns the longest wait (us) before every one holds min(cost, burst) tokens, the index (1 to
# n) of the bucket that waits it (0: none waits), and their state for `buckets_take`, which
# takes `cost` tokens from each. Numbers are written as integers ('%.0f'): Lua's tostring keeps
# 14 digits, too few for microseconds since 1970.
LUA = """
local function buckets_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local function buckets_check(k, a, n, cost, now)
  local state, wait, which = {}, 0, 0
  for i = 1, n do
    local key = KEYS[k + i]
    local rate, burst = tonumber(ARGV[a + 2 * i - 1]), tonumber(ARGV[a + 2 * i])
    local per_event = 1000000 / rate
    local full_at = math.max(tonumber(redis.call('GET', key) or now), now)
    local ready_at = full_at - (burst - math.min(cost, burst)) * per_event
    if ready_at - now > wait then wait, which = ready_at - now, i end
    state[i] = {key, full_at, per_event}
  end
  return math.ceil(wait), which, state
end

local function buckets_take(state, cost, now)
  for _, bucket in ipairs(state) do
    local full_at = bucket[2] + cost * bucket[3]
    local ttl_ms = math.max(1, math.ceil((full_at - now) / 1000))
    local value = string.format('%.0f', full_at)
    redis.call('SET', bucket[1], value, 'PX', string.format('%.0f', ttl_ms))
  end
end
"""
