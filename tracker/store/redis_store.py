"""The shared store for tracker replicas: Redis, with every check-then-write done in one Lua script.

Key layout (``P`` is the prefix, ``layerswarm:`` by default):
    P agent:<id>            hash  key, info (JSON AgentInfo), last_seen, expires, ver (a hash
                                  of the other four: names the record's content exactly),
                                  region (the one its holdings are indexed under)
    P agents                zset  id -> expires, for listing and pruning
    P adig:<id>             set   digests the agent announced, to forget them when it goes
    P holders:<digest>      hash  agent id -> JSON Holding
    P rh:<region>:<digest>  hash  agent id -> 1: the region's complete copies; P rf:... its
                                  fetchers (TTL: a week past the region's last announce or
                                  lookup of the digest; after that the region's lookups
                                  sample the fleet until its next announce)
    P counters              hash  incarnation -> JSON Counters, plus the agent's "region"
                                  (live and recently dead agents)
    P retired               hash  "region TAB counter name" -> total of agents pruned
    P retiredinc            hash  incarnation -> JSON counters folded into retired;
    P retiredinc_t          zset  incarnation -> when (the newest MAX_RETIRED_INCARNATIONS kept)
    P lease:<region>:<dig>  hash  holder, expires (Redis TTL: a minute past expires)
    P tree:<region>:<dig>   hash  relay parent links: "c TAB child" -> parent, "p TAB parent"
                                  -> child, expires (Redis TTL: a minute past expires)
    P tails:<region>:<dig>  set   the tree's members given no child yet (same TTL)
    P hot                   zset  digest -> lookups (the busiest MAX_HOT kept)
    P bad:<digest>          hash  "peer TAB reporter" -> expires (TTL: past the last expiry)
    P badexp                zset  "digest TAB peer TAB reporter" -> expires;  P badcount  hash
    P meta:<digest>         hash  total_size, <index> -> JSON SegmentMeta (TTL: past expires)
    P metaexp               zset  digest -> expires
    P invalidations         list  JSON Invalidation, oldest first (the newest MAX_INVALIDATIONS)
    P jobs                  hash  job id -> JSON PreheatJob;  P jobrep:<id>  hash agent -> JSON

Expiry uses the tracker's clock passed in as ``now`` (pruned by ``prune``), so replicas and
tests share one notion of time; keys that live for a limited time also carry a Redis TTL a
minute past their logical expiry, so a replica that stops pruning cannot leave them forever.
Scripts touch keys they derive from the prefix, which a single Redis (or a primary with
replicas) allows; Redis Cluster is not supported. With ``redis+sentinel://`` the store asks
the sentinels for the master and again after a failover (redis-py's SentinelConnectionPool);
calls in flight then fail as StoreUnavailable, and scripts are loaded again on the new master.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from core.trackererrors import StoreUnavailable
from core.wire import AgentInfo, Counters, Invalidation, Metainfo, PreheatJob, SegmentMeta
from tracker.config import parse_sentinel_url
from tracker.model import AgentRecord, Holding, LeaseResult, PreheatReport
from tracker.store.base import (
    BAD_PEER_QUORUM,
    MAX_HOT,
    MAX_INVALIDATIONS,
    MAX_RETIRED_INCARNATIONS,
    MAX_TAILS_TRIED,
    MAX_TREE_WALK,
    BadReport,
    BindStatus,
    PeerView,
    PutStatus,
)
from tracker.store.memory import incarnation

P = ParamSpec("P")
T = TypeVar("T")

# Adds (sign 1) or takes back (-1) one incarnation's counts (JSON with its "region") to the
# retired totals, by region; "region TAB name" fields. Regions past the first 1000 count as
# "(other)": the labels come from agents, and a rogue could invent one per heartbeat.
_FOLD = """
local function fold(prefix, raw, sign)
  local c = cjson.decode(raw)
  local region = c.region
  if type(region) ~= 'string' then region = '' end
  local rkey = prefix .. 'retired'
  if redis.call('HEXISTS', rkey, region .. '\\tserved_cache') == 0
     and redis.call('HLEN', rkey) >= 1000 * 6 then
    region = '(other)'
  end
  for k, v in pairs(c) do
    if k ~= 'region' and type(v) == 'number' then
      redis.call('HINCRBY', rkey, region .. '\\t' .. k, string.format('%d', sign * v))
    end
  end
end
"""

# A region's index keys of a digest live this long past the last announce or lookup that
# touched them (a backstop: prune and withdrawals keep them exact).
INDEX_TTL_MS = 7 * 86400 * 1000

# Takes one agent's holding of digest d out of the holders and the region index.
_UNHOLD = """
local function unhold(prefix, id, d, region)
  redis.call('HDEL', prefix .. 'holders:' .. d, id)
  if region then
    redis.call('HDEL', prefix .. 'rh:' .. region .. ':' .. d, id)
    redis.call('HDEL', prefix .. 'rf:' .. region .. ':' .. d, id)
  end
end
"""

_BIND = (
    _FOLD
    + _UNHOLD
    + """
local cur = redis.call('HMGET', KEYS[1], 'key', 'expires', 'region')
local now = tonumber(ARGV[4])
local status = 'new'
if cur[1] then
  local alive = tonumber(cur[2]) > now
  if cur[1] ~= ARGV[2] then
    if alive then return 'conflict' end
    for _, d in ipairs(redis.call('SMEMBERS', KEYS[3])) do
      unhold(ARGV[6], ARGV[1], d, cur[3])
    end
    redis.call('DEL', KEYS[3])
    -- That incarnation can never come back (its id has another key now): fold it.
    local old_inc = redis.call('HGET', KEYS[1], 'inc')
    if old_inc then
      local raw = redis.call('HGET', KEYS[4], old_inc)
      if raw then
        fold(ARGV[6], raw, 1)
        redis.call('HDEL', KEYS[4], old_inc)
      end
    end
  else
    if alive then status = 'renewed' end
    if cur[3] and cur[3] ~= ARGV[10] then
      -- Same incarnation, another region: its holdings are found in the new one.
      for _, d in ipairs(redis.call('SMEMBERS', KEYS[3])) do
        for _, kind in ipairs({'rh:', 'rf:'}) do
          if redis.call('HDEL', ARGV[6] .. kind .. cur[3] .. ':' .. d, ARGV[1]) == 1 then
            local moved = ARGV[6] .. kind .. ARGV[10] .. ':' .. d
            redis.call('HSET', moved, ARGV[1], '1')
            redis.call('PEXPIRE', moved, @INDEX_TTL@)
          end
        end
      end
    end
  end
end
-- Pruned, then back under the same key: its counters count once, live again.
local back = redis.call('HGET', ARGV[6] .. 'retiredinc', ARGV[7])
if back then
  fold(ARGV[6], back, -1)
  redis.call('HDEL', ARGV[6] .. 'retiredinc', ARGV[7])
  redis.call('ZREM', ARGV[6] .. 'retiredinc_t', ARGV[7])
end
redis.call('HSET', KEYS[1], 'key', ARGV[2], 'info', ARGV[3], 'last_seen', ARGV[4],
           'expires', ARGV[5], 'ver', ARGV[9], 'inc', ARGV[7], 'region', ARGV[10])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[4], ARGV[7], ARGV[8])
return status
"""
).replace("@INDEX_TTL@", str(INDEX_TTL_MS))

# KEYS: agent, adig; ARGV: prefix, agent id, then digest, state, holding JSON per holding.
# An agent without a region field (registered by an older tracker) is not indexed until its
# next heartbeat; its holdings are still in the fleet-wide sample.
_PUT_HOLDINGS = """
local region = redis.call('HGET', KEYS[1], 'region')
local id = ARGV[2]
for i = 3, #ARGV, 3 do
  local d = ARGV[i]
  redis.call('HSET', ARGV[1] .. 'holders:' .. d, id, ARGV[i + 2])
  redis.call('SADD', KEYS[2], d)
  if region then
    local put, drop = 'rh:', 'rf:'
    if ARGV[i + 1] ~= 'holding' then put, drop = 'rf:', 'rh:' end
    local tail = region .. ':' .. d
    redis.call('HDEL', ARGV[1] .. drop .. tail, id)
    redis.call('HSET', ARGV[1] .. put .. tail, id, '1')
    redis.call('PEXPIRE', ARGV[1] .. put .. tail, @INDEX_TTL@)
  end
end
return 0
""".replace("@INDEX_TTL@", str(INDEX_TTL_MS))

# KEYS: agent, adig; ARGV: prefix, agent id, digest.
_REMOVE_HOLDING = (
    _UNHOLD
    + """
unhold(ARGV[1], ARGV[2], ARGV[3], redis.call('HGET', KEYS[1], 'region'))
redis.call('SREM', KEYS[2], ARGV[3])
return 0
"""
)

# The holders part of a lookup, shared by the two scripts below. Per sampled holder one line
# "id TAB ver TAB holding-JSON" ('' for ver when the record is gone or predates versions): the
# replica keeps parsed records by ver (RedisStore._records), so a lookup moves a short hash per
# holder instead of its whole record, and one string instead of hundreds of RESP items. Agent
# ids and compact JSON hold no TAB or newline.
# With more holders than the limit and a region (the asker's): a sample of the region's
# complete copies (limit/2), of its fetchers (limit/4), then of the fleet up to the limit.
_VIEW_BODY = """
local limit = tonumber(ARGV[3])
local h
if redis.call('HLEN', KEYS[2]) <= limit then
  h = redis.call('HGETALL', KEYS[2])
elseif region then
  h = {}
  local n = 0
  local seen = {}
  local tail = region .. ':' .. ARGV[2]
  for _, part in ipairs({{'rh:', math.floor(limit / 2)}, {'rf:', math.floor(limit / 4)}}) do
    local ikey = ARGV[1] .. part[1] .. tail
    local ids = {}
    if part[2] > 0 then ids = redis.call('HRANDFIELD', ikey, part[2]) end
    if #ids > 0 then
      redis.call('PEXPIRE', ikey, @INDEX_TTL@)
      local raws = redis.call('HMGET', KEYS[2], unpack(ids))
      for j, id in ipairs(ids) do
        if raws[j] then
          seen[id] = true
          n = n + 1
          h[2 * n - 1] = id
          h[2 * n] = raws[j]
        end
      end
    end
  end
  if limit > n then
    -- As many as the limit: at most n of them are already in.
    local rest = redis.call('HRANDFIELD', KEYS[2], limit, 'WITHVALUES')
    for j = 1, #rest, 2 do
      if n < limit and not seen[rest[j]] then
        n = n + 1
        h[2 * n - 1] = rest[j]
        h[2 * n] = rest[j + 1]
      end
    end
  end
else
  h = redis.call('HRANDFIELD', KEYS[2], limit, 'WITHVALUES')
end
local out = {}
for i = 1, #h, 2 do
  local v = redis.call('HGET', ARGV[1] .. 'agent:' .. h[i], 'ver')
  out[#out + 1] = h[i] .. '\\t' .. (v or '') .. '\\t' .. h[i + 1]
end
local view = {table.concat(out, '\\n'), redis.call('HGETALL', KEYS[3]),
              redis.call('HGETALL', KEYS[5])}
""".replace("@INDEX_TTL@", str(INDEX_TTL_MS))

# KEYS: agent (unused), holders, bad, hot, meta; ARGV: prefix, digest, limit, count, and
# the region to sample first (absent: the fleet only).
_VIEW = (
    """
if ARGV[4] == '1' then redis.call('ZINCRBY', KEYS[4], 1, ARGV[2]) end
local region = ARGV[5]
"""
    + _VIEW_BODY
    + """
return view
"""
)

# A lookup's authentication and peer view in one round trip. The asker must be alive at ARGV[4]
# and its key's SHA-1 must equal ARGV[5] (comparing digests, not keys, so the comparison's
# timing says nothing about the key); otherwise nothing is counted or read. The replica checks
# the returned record again (expiry, constant-time key comparison) before answering.
_LOOKUP = (
    """
local me = redis.call('HMGET', KEYS[1], 'key', 'expires', 'ver', 'region')
if not me[1] or not me[2] or tonumber(me[2]) <= tonumber(ARGV[4]) then return {'unknown'} end
if redis.sha1hex(me[1]) ~= ARGV[5] then return {'forbidden'} end
redis.call('ZINCRBY', KEYS[4], 1, ARGV[2])
local region = me[4]
"""
    + _VIEW_BODY
    + """
return {'ok', me[3] or '', view[1], view[2], view[3]}
"""
)

# KEYS: tree, holders, tails; ARGV: prefix, now, expires, ttl ms, child, then (candidate,
# rooted) pairs. See TrackerStore.assign_parent; a holding's JSON is written by _dumps
# (compact, sorted keys), so its state reads as a plain substring.
_ASSIGN = """
local now = tonumber(ARGV[2])
local child = ARGV[5]
local exp = redis.call('HGET', KEYS[1], 'expires')
if exp and tonumber(exp) <= now then redis.call('DEL', KEYS[1], KEYS[3]) end
local function holds(c, p)
  if redis.call('HGET', KEYS[1], 'c\t' .. c) ~= p then return false end
  local e = redis.call('HGET', ARGV[1] .. 'agent:' .. c, 'expires')
  if not e or tonumber(e) <= now then return false end
  local h = redis.call('HGET', KEYS[2], c)
  return h and string.find(h, '"state":"fetching"', 1, true) ~= nil
end
local function below(node, anc)
  for _ = 1, @WALK@ do
    if node == anc then return true end
    local up = redis.call('HGET', KEYS[1], 'c\t' .. node)
    if not up then return false end
    node = up
  end
  return false
end
local cands = {}
for i = 6, #ARGV, 2 do cands[#cands + 1] = {ARGV[i], ARGV[i + 1] == '1'} end
for _, t in ipairs(redis.call('SRANDMEMBER', KEYS[3], @TAILS@)) do
  cands[#cands + 1] = {t, false}
end
for _, c in ipairs(cands) do
  local cand = c[1]
  if cand ~= child and (c[2] or redis.call('HEXISTS', KEYS[1], 'c\t' .. cand) == 1) then
    local e = redis.call('HGET', ARGV[1] .. 'agent:' .. cand, 'expires')
    local taken = redis.call('HGET', KEYS[1], 'p\t' .. cand)
    if not e or tonumber(e) <= now then
      redis.call('SREM', KEYS[3], cand)
    elseif not (taken and taken ~= child and holds(taken, cand)) and not below(cand, child) then
      local old = redis.call('HGET', KEYS[1], 'c\t' .. child)
      if old and redis.call('HGET', KEYS[1], 'p\t' .. old) == child then
        redis.call('HDEL', KEYS[1], 'p\t' .. old)
      end
      redis.call('HSET', KEYS[1], 'c\t' .. child, cand, 'p\t' .. cand, child)
      -- Added before the removal: a set emptied even for a moment loses its TTL.
      redis.call('SADD', KEYS[3], child)
      redis.call('SREM', KEYS[3], cand)
      local cur = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
      if tonumber(ARGV[3]) > cur then
        redis.call('HSET', KEYS[1], 'expires', ARGV[3])
        redis.call('PEXPIRE', KEYS[1], ARGV[4])
        redis.call('PEXPIRE', KEYS[3], ARGV[4])
      end
      return cand
    end
  end
end
return false
""".replace("@WALK@", str(MAX_TREE_WALK)).replace("@TAILS@", str(MAX_TAILS_TRIED))

# KEYS: tree, tails; ARGV: now, reporter, peer. See TrackerStore.void_parent.
_VOID = """
local exp = redis.call('HGET', KEYS[1], 'expires')
if not exp or tonumber(exp) <= tonumber(ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'c\t' .. ARGV[2]) ~= ARGV[3] then return 0 end
local up = redis.call('HGET', KEYS[1], 'c\t' .. ARGV[3])
if up and redis.call('HGET', KEYS[1], 'p\t' .. up) == ARGV[3] then
  redis.call('HDEL', KEYS[1], 'p\t' .. up)
end
redis.call('HDEL', KEYS[1], 'c\t' .. ARGV[3], 'p\t' .. ARGV[3], 'c\t' .. ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3], ARGV[2])
return 1
"""

_ACQUIRE = """
local cur = redis.call('HMGET', KEYS[1], 'holder', 'expires')
local now = tonumber(ARGV[2])
local took = 0
if cur[1] then
  local lease_until = tonumber(cur[2])
  if cur[1] == ARGV[1] then
    if lease_until > now then return {1, cur[1], 0} end
  else
    local exp = redis.call('HGET', ARGV[4] .. 'agent:' .. cur[1], 'expires')
    if lease_until > now and exp and tonumber(exp) > now then return {0, cur[1], 0} end
    took = 1
  end
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, ARGV[1], took}
"""

_RENEW = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'expires', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

_RELEASE = """
for _, k in ipairs(KEYS) do
  if redis.call('HGET', k, 'holder') == ARGV[1] then redis.call('DEL', k) end
end
return 0
"""

# KEYS: meta, metaexp; ARGV: total_size, index, segment JSON, expires, ttl ms, replace, digest.
_PUT_SEGMENT = """
local status = 'stored'
if ARGV[6] == '1' then
  redis.call('DEL', KEYS[1])
else
  local size = redis.call('HGET', KEYS[1], 'total_size')
  if size and size ~= ARGV[1] then return 'conflict' end
  local cur = redis.call('HGET', KEYS[1], ARGV[2])
  if cur then
    -- One content: torrent files of it may differ in creation date, never in info hash.
    local a, b = cjson.decode(cur), cjson.decode(ARGV[3])
    if a.offset ~= b.offset or a.length ~= b.length or a.info_hash ~= b.info_hash then
      return 'conflict'
    end
    status = 'same'
  end
end
if status == 'stored' then
  redis.call('HSET', KEYS[1], 'total_size', ARGV[1], ARGV[2], ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[7])
if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return status
"""

# KEYS: bad, badexp, badcount; ARGV: peer, reporter, expires, ttl ms, digest, now. Returns
# the peer's distinct live reporters (this one included) and 1 when this reporter had
# reported nobody for the digest yet.
_ADD_BAD = """
local field = ARGV[1] .. '\\t' .. ARGV[2]
local now = tonumber(ARGV[6])
local first, others = 1, 0
local cur = redis.call('HGETALL', KEYS[1])
for i = 1, #cur, 2 do
  if tonumber(cur[i + 1]) > now then
    local tab = string.find(cur[i], '\\t', 1, true)
    local peer, reporter = string.sub(cur[i], 1, tab - 1), string.sub(cur[i], tab + 1)
    if reporter == ARGV[2] then first = 0 elseif peer == ARGV[1] then others = others + 1 end
  end
end
if redis.call('HSET', KEYS[1], field, ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5] .. '\\t' .. field)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return {others + 1, first}
"""

# Expired metainfo and bad-peer reports; lookup counts beyond the busiest; retired incarnations
# beyond the newest. KEYS: metaexp, badexp, hot, retiredinc_t; ARGV: now, prefix, max hot,
# max retired.
_PRUNE_REST = """
local now = ARGV[1]
local metas = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1000)
for _, d in ipairs(metas) do
  redis.call('DEL', ARGV[2] .. 'meta:' .. d)
  redis.call('ZREM', KEYS[1], d)
end
local reports = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(reports) do
  local tab = string.find(m, '\\t', 1, true)
  local digest, field = string.sub(m, 1, tab - 1), string.sub(m, tab + 1)
  local bkey = ARGV[2] .. 'bad:' .. digest
  local exp = redis.call('HGET', bkey, field)
  if exp and tonumber(exp) <= tonumber(now) then redis.call('HDEL', bkey, field) end
  redis.call('ZREM', KEYS[2], m)
end
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[3]) + 1))
local n = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[4])
if n > 0 then
  for _, inc in ipairs(redis.call('ZRANGE', KEYS[4], 0, n - 1)) do
    redis.call('HDEL', ARGV[2] .. 'retiredinc', inc)
    redis.call('ZREM', KEYS[4], inc)
  end
end
return math.max(#metas, #reports)
"""

# Re-checks each candidate's expiry inside the script so an agent that heartbeats between the
# listing and the deletion is kept.
_PRUNE = (
    _FOLD
    + _UNHOLD
    + """
local now = tonumber(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
local n = 0
for _, id in ipairs(ids) do
  local exp = redis.call('HGET', ARGV[2] .. 'agent:' .. id, 'expires')
  if (not exp) or tonumber(exp) <= now then
    local dkey = ARGV[2] .. 'adig:' .. id
    local region = redis.call('HGET', ARGV[2] .. 'agent:' .. id, 'region')
    for _, d in ipairs(redis.call('SMEMBERS', dkey)) do
      unhold(ARGV[2], id, d, region)
    end
    -- Its counters fold into the retired total, remembered in case it comes back.
    local inc = redis.call('HGET', ARGV[2] .. 'agent:' .. id, 'inc')
    if inc then
      local raw = redis.call('HGET', ARGV[2] .. 'counters', inc)
      if raw then
        fold(ARGV[2], raw, 1)
        redis.call('HDEL', ARGV[2] .. 'counters', inc)
        redis.call('HSET', ARGV[2] .. 'retiredinc', inc, raw)
        redis.call('ZADD', ARGV[2] .. 'retiredinc_t', now, inc)
      end
    end
    redis.call('HDEL', ARGV[2] .. 'badcount', id)
    redis.call('DEL', dkey, ARGV[2] .. 'agent:' .. id)
    redis.call('ZREM', KEYS[1], id)
    n = n + 1
  end
end
return {n, #ids}
"""
)


def _translated(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn Redis and socket failures into StoreUnavailable at the store's boundary."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    return wrapper


def _num(x: float) -> str:
    # repr round-trips a float exactly and Lua's tonumber reads it back.
    return repr(float(x))


def _ttl_ms(now: float, expires: float) -> str:
    """A Redis TTL a minute past a logical expiry (0: none, for what never expires)."""
    if expires == float("inf"):
        return "0"
    return str(max(1, int((expires - now + 60) * 1000)))


def _bad_set(raw: list[str] | dict[str, str], asker: str) -> frozenset[str]:
    """Peers to leave out: reported by BAD_PEER_QUORUM distinct agents, or by the asker."""
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    reporters: dict[str, int] = {}
    mine: set[str] = set()
    for field in raw:
        peer, _, reporter = field.partition("\t")
        reporters[peer] = reporters.get(peer, 0) + 1
        if asker and reporter == asker:
            mine.add(peer)
    return frozenset(mine | {p for p, n in reporters.items() if n >= BAD_PEER_QUORUM})


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


# Every lookup reads the records of all of a digest's holders; parsing the same JSON again
# dominated CPU, and a record's text only changes with its agent's heartbeat.
@functools.lru_cache(maxsize=1 << 16)
def _info_from(raw: str) -> AgentInfo:
    d = json.loads(raw)
    d["counters"] = Counters(**d["counters"])
    return AgentInfo(**d)


# A holding's text changes only when its agent announces again; lookups read the same ones.
@functools.lru_cache(maxsize=1 << 18)
def _holding_from(raw: str) -> Holding:
    return Holding.from_stored(json.loads(raw))


def record_version(key: str, info: str, last_seen: str, expires: str) -> str:
    """Names an agent record's stored content: equal versions mean equal records."""
    h = hashlib.blake2b(digest_size=12)
    for part in (key, info, last_seen, expires):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# Parsed records kept per replica; past this many the cache starts over (agents come and go).
MAX_CACHED_RECORDS = 1 << 18
_FIELDS = ["key", "info", "last_seen", "expires", "ver"]


class RedisStore:
    def __init__(
        self,
        client: aioredis.Redis,
        pool: aioredis.ConnectionPool,
        *,
        prefix: str = "layerswarm:",
        also_close: Sequence[aioredis.Redis] = (),
    ) -> None:
        self._r = client
        self._pool = pool
        self._also_close = list(also_close)
        self._p = prefix
        self._bind = client.register_script(_BIND)
        self._put_holdings = client.register_script(_PUT_HOLDINGS)
        self._remove_holding = client.register_script(_REMOVE_HOLDING)
        self._view = client.register_script(_VIEW)
        self._lookup = client.register_script(_LOOKUP)
        # agent id -> (ver, record). Content-addressed by ver, which every lookup reads afresh
        # from Redis, so an entry is either exactly the stored record or not used: a cached
        # record can never outlive a heartbeat, a re-registration or a prune on any replica.
        self._records: dict[str, tuple[str, AgentRecord]] = {}
        self._acquire = client.register_script(_ACQUIRE)
        self._assign = client.register_script(_ASSIGN)
        self._void = client.register_script(_VOID)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._put_segment = client.register_script(_PUT_SEGMENT)
        self._add_bad = client.register_script(_ADD_BAD)
        self._prune = client.register_script(_PRUNE)
        self._prune_rest = client.register_script(_PRUNE_REST)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout: float = 5.0,
        max_connections: int = 64,
        prefix: str = "layerswarm:",
    ) -> RedisStore:
        if url.startswith("redis+sentinel://"):
            sentinels, name, db = parse_sentinel_url(url)
            timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            # redis-py's Sentinel has no annotations.
            sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts, **timeouts)  # type: ignore[no-untyped-call]
            client = sentinel.master_for(
                name, db=db, decode_responses=True, max_connections=max_connections
            )
            return cls(client, client.connection_pool, prefix=prefix, also_close=sentinel.sentinels)
        # A blocking pool bounds connections per replica: a burst of requests queues for a
        # connection instead of opening hundreds of sockets to Redis.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            decode_responses=True,
        )
        return cls(aioredis.Redis(connection_pool=pool), pool, prefix=prefix)

    async def close(self) -> None:
        await self._r.aclose()
        await self._pool.aclose()
        for other in self._also_close:
            await other.aclose()

    @_translated
    async def ping(self) -> None:
        await self._r.ping()

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    @_translated
    async def bind_agent(self, info: AgentInfo, key: str, now: float, expires: float) -> BindStatus:
        aid = info.agent_id
        info_json, seen, until = _dumps(info.to_json()), _num(now), _num(expires)
        status = await self._bind(
            keys=[
                self._k("agent", aid),
                self._k("agents"),
                self._k("adig", aid),
                self._k("counters"),
            ],
            args=[
                aid,
                key,
                info_json,
                seen,
                until,
                self._p,
                incarnation(aid, key),
                _dumps({**info.counters.to_json(), "region": info.region}),
                record_version(key, info_json, seen, until),
                info.region,
            ],
        )
        return cast(BindStatus, status)

    @staticmethod
    def _record(key: str, info: str, last_seen: str, expires: str) -> AgentRecord:
        return AgentRecord(_info_from(info), key, float(last_seen), float(expires))

    @_translated
    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        key, info, last_seen, expires = cast(
            list[str | None],
            await self._r.hmget(
                self._k("agent", agent_id), ["key", "info", "last_seen", "expires"]
            ),
        )
        if key is None or info is None:
            return None
        return self._record(key, info, last_seen or "0", expires or "0")

    @_translated
    async def live_agents(self, now: float) -> list[AgentRecord]:
        ids = cast(
            list[str], await self._r.zrangebyscore(self._k("agents"), f"({_num(now)}", "+inf")
        )
        if not ids:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for aid in ids:
                pipe.hmget(self._k("agent", aid), ["key", "info", "last_seen", "expires"])
            rows = await pipe.execute()
        out = []
        for row in rows:
            if row[0] is not None and row[1] is not None:
                rec = self._record(*row)
                if rec.alive(now):
                    out.append(rec)
        return out

    @_translated
    async def count_agents(self, now: float) -> int:
        return int(await self._r.zcount(self._k("agents"), f"({_num(now)}", "+inf"))

    @_translated
    async def prune(self, now: float) -> int:
        total = 0
        while True:
            removed, seen = await self._prune(keys=[self._k("agents")], args=[_num(now), self._p])
            total += int(removed)
            if int(seen) < 500:
                break
        # Batches of 1000 keep each script short; a bounded number of them per prune keeps up
        # with any rate a tracker can accept between two prunes.
        for _ in range(100):
            done = await self._prune_rest(
                keys=[
                    self._k("metaexp"),
                    self._k("badexp"),
                    self._k("hot"),
                    self._k("retiredinc_t"),
                ],
                args=[_num(now), self._p, str(MAX_HOT), str(MAX_RETIRED_INCARNATIONS)],
            )
            if int(done) < 1000:
                break
        return total

    @_translated
    async def counter_totals(self) -> Counters:
        total = Counters()
        for counters in (await self.region_totals()).values():
            total = total + counters
        return total

    @_translated
    async def region_totals(self) -> dict[str, Counters]:
        out: dict[str, Counters] = {}
        for raw in await self._r.hvals(self._k("counters")):
            data = json.loads(raw)
            region = str(data.pop("region", ""))
            out[region] = out.get(region, Counters()) + Counters(**data)
        retired = cast(dict[str, str], await self._r.hgetall(self._k("retired")))
        by_region: dict[str, dict[str, int]] = {}
        for field, value in retired.items():
            region, _, name = field.rpartition("\t")
            if name in Counters.__dataclass_fields__:
                by_region.setdefault(region, {})[name] = max(0, int(value))
        for region, counts in by_region.items():
            out[region] = out.get(region, Counters()) + Counters(**counts)
        return out

    @_translated
    async def holding_count(self, agent_id: str) -> int:
        return int(await self._r.scard(self._k("adig", agent_id)))

    @_translated
    async def usage(self) -> dict[str, int]:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.zcard(self._k("agents"))
            pipe.hlen(self._k("counters"))
            pipe.hlen(self._k("retiredinc"))
            pipe.zcard(self._k("hot"))
            pipe.zcard(self._k("badexp"))
            pipe.hlen(self._k("badcount"))
            pipe.zcard(self._k("metaexp"))
            pipe.hlen(self._k("jobs"))
            rows = await pipe.execute()
        names = (
            "agents",
            "counters",
            "retired_incarnations",
            "lookups",
            "bad_reports",
            "bad_counts",
            "metainfo",
            "jobs",
        )
        return {n: int(v) for n, v in zip(names, rows, strict=True)}

    @_translated
    async def put_holdings(self, agent_id: str, holdings: Sequence[tuple[str, Holding]]) -> None:
        if not holdings:
            return
        args = [self._p, agent_id]
        for digest, h in holdings:
            args += [digest, h.state, _dumps(h.to_json())]
        await self._put_holdings(
            keys=[self._k("agent", agent_id), self._k("adig", agent_id)], args=args
        )

    @_translated
    async def remove_holding(self, agent_id: str, digest: str) -> None:
        await self._remove_holding(
            keys=[self._k("agent", agent_id), self._k("adig", agent_id)],
            args=[self._p, agent_id, digest],
        )

    def _view_keys(self, agent_id: str, digest: str) -> list[str]:
        return [
            self._k("agent", agent_id),
            self._k("holders", digest),
            self._k("bad", digest),
            self._k("hot"),
            self._k("meta", digest),
        ]

    @_translated
    async def peer_view(
        self,
        digest: str,
        *,
        count_lookup: bool,
        limit: int = 1 << 30,
        asker: str = "",
        region: str | None = None,
    ) -> PeerView:
        args = [self._p, digest, str(limit), "1" if count_lookup else "0"]
        if region is not None:
            args.append(region)
        holders, bad, meta = await self._view(keys=self._view_keys("", digest), args=args)
        return await self._peer_view(digest, holders, bad, meta, asker=asker)

    @_translated
    async def lookup_view(
        self, agent_id: str, key: str, digest: str, now: float, limit: int
    ) -> tuple[AgentRecord | None, PeerView | None]:
        """The asker's record and, when it is alive under ``key``, the counted peer view.

        One round trip for what a lookup reads (see ``AuthenticatedLookup``).
        """
        offered = hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()
        reply = await self._lookup(
            keys=self._view_keys(agent_id, digest),
            args=[self._p, digest, str(limit), _num(now), offered],
        )
        if reply[0] == "unknown":
            return None, None
        rec = await self.get_agent(agent_id) if reply[0] == "forbidden" else None
        if reply[0] != "ok":
            return rec, None
        _, ver, holders, bad, meta = reply
        view = await self._peer_view(
            digest, holders, bad, meta, extra=(agent_id, ver), asker=agent_id
        )
        asker = self._records.get(agent_id)
        if asker is None or asker[0] != ver:
            return await self.get_agent(agent_id), view
        return asker[1], view

    async def _peer_view(
        self,
        digest: str,
        holders: str,
        bad: list[str],
        meta: list[str],
        *,
        extra: tuple[str, str] | None = None,
        asker: str = "",
    ) -> PeerView:
        rows = [line.split("\t", 2) for line in holders.split("\n")] if holders else []
        cache = self._records
        wanted = [(aid, ver) for aid, ver, _ in rows]
        if extra is not None:
            wanted.append(extra)
        missing = [aid for aid, ver in wanted if not ver or cache.get(aid, ("",))[0] != ver]
        # Versions that moved on between the script and this reload get the reloaded (newer)
        # record, whose own expiry still decides whether it is used.
        loaded = await self._load_records(missing) if missing else {}
        out: list[tuple[Holding, AgentRecord | None]] = []
        for aid, _, raw in rows:
            rec = loaded[aid] if aid in loaded else cache[aid][1]
            out.append((_holding_from(raw), rec))
        return PeerView(tuple(out), _bad_set(bad, asker), self._meta_from(digest, meta))

    async def _load_records(self, agent_ids: list[str]) -> dict[str, AgentRecord | None]:
        async with self._r.pipeline(transaction=False) as pipe:
            for aid in agent_ids:
                pipe.hmget(self._k("agent", aid), _FIELDS)
            rows = await pipe.execute()
        if len(self._records) + len(agent_ids) > MAX_CACHED_RECORDS:
            self._records.clear()
        out: dict[str, AgentRecord | None] = {}
        for aid, (key, info, last_seen, expires, ver) in zip(agent_ids, rows, strict=True):
            if key is None or info is None:
                self._records.pop(aid, None)
                out[aid] = None
                continue
            rec = out[aid] = self._record(key, info, last_seen or "0", expires or "0")
            if ver:
                self._records[aid] = (ver, rec)
        return out

    @_translated
    async def hottest(self, limit: int) -> list[tuple[str, int]]:
        rows = cast(
            list[tuple[str, float]],
            await self._r.zrevrange(self._k("hot"), 0, limit - 1, withscores=True),
        )
        return [(d, int(score)) for d, score in rows]

    @_translated
    async def acquire_lease(
        self, region: str, digest: str, agent_id: str, now: float, expires: float
    ) -> LeaseResult:
        granted, holder, took = await self._acquire(
            keys=[self._k("lease", region, digest)],
            args=[agent_id, _num(now), _num(expires), self._p, _ttl_ms(now, expires)],
        )
        return LeaseResult(bool(granted), holder, bool(took))

    @_translated
    async def renew_lease(
        self, region: str, digest: str, agent_id: str, now: float, expires: float
    ) -> bool:
        done = await self._renew(
            keys=[self._k("lease", region, digest)],
            args=[agent_id, _num(expires), _ttl_ms(now, expires)],
        )
        return bool(done)

    @_translated
    async def release_leases(self, region: str, digests: Sequence[str], agent_id: str) -> None:
        if digests:
            keys = [self._k("lease", region, d) for d in digests]
            await self._release(keys=keys, args=[agent_id])

    @_translated
    async def add_bad_peer(
        self, digest: str, peer_id: str, reporter: str, now: float, expires: float
    ) -> BadReport:
        reporters, first = await self._add_bad(
            keys=[self._k("bad", digest), self._k("badexp"), self._k("badcount")],
            args=[peer_id, reporter, _num(expires), _ttl_ms(now, expires), digest, _num(now)],
        )
        return BadReport(int(reporters), bool(first))

    @_translated
    async def assign_parent(
        self,
        region: str,
        digest: str,
        child: str,
        candidates: Sequence[tuple[str, bool]],
        now: float,
        expires: float,
    ) -> str | None:
        args = [self._p, _num(now), _num(expires), _ttl_ms(now, expires), child]
        for cand, rooted in candidates:
            args += [cand, "1" if rooted else "0"]
        keys = [
            self._k("tree", region, digest),
            self._k("holders", digest),
            self._k("tails", region, digest),
        ]
        got = await self._assign(keys=keys, args=args)
        return str(got) if got else None

    @_translated
    async def void_parent(
        self, region: str, digest: str, reporter: str, peer: str, now: float
    ) -> bool:
        done = await self._void(
            keys=[self._k("tree", region, digest), self._k("tails", region, digest)],
            args=[_num(now), reporter, peer],
        )
        return bool(done)

    @_translated
    async def bad_peer_counts(self) -> dict[str, int]:
        raw = cast(dict[str, str], await self._r.hgetall(self._k("badcount")))
        return {k: int(v) for k, v in raw.items()}

    @_translated
    async def put_segment(
        self,
        digest: str,
        total_size: int,
        segment: SegmentMeta,
        *,
        now: float = 0.0,
        expires: float = float("inf"),
        replace: bool = False,
    ) -> PutStatus:
        status = await self._put_segment(
            keys=[self._k("meta", digest), self._k("metaexp")],
            args=[
                str(total_size),
                str(segment.index),
                _dumps(segment.to_json()),
                # Lua's tonumber reads "inf" as infinity; ZADD takes "+inf".
                "+inf" if expires == float("inf") else _num(expires),
                _ttl_ms(now, expires),
                "1" if replace else "0",
                digest,
            ],
        )
        return cast(PutStatus, status)

    @_translated
    async def get_metainfo(self, digest: str) -> Metainfo | None:
        raw = cast(dict[str, str], await self._r.hgetall(self._k("meta", digest)))
        return self._meta_from(digest, raw)

    @staticmethod
    def _meta_from(digest: str, raw: dict[str, str] | list[str]) -> Metainfo | None:
        if isinstance(raw, list):
            # HGETALL inside a script comes back as a flat list of field, value.
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        if "total_size" not in raw:
            return None
        size = int(raw.pop("total_size"))
        segs = sorted(
            (SegmentMeta.from_json(json.loads(v)) for v in raw.values()), key=lambda s: s.index
        )
        return Metainfo(digest, size, tuple(segs))

    @_translated
    async def put_invalidation(self, inv: Invalidation) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.rpush(self._k("invalidations"), _dumps(inv.to_json()))
            pipe.ltrim(self._k("invalidations"), -MAX_INVALIDATIONS, -1)
            await pipe.execute()

    @_translated
    async def invalidations(self) -> list[Invalidation]:
        raw = await self._r.lrange(self._k("invalidations"), 0, -1)
        return [Invalidation.from_json(json.loads(r)) for r in raw]

    @_translated
    async def put_job(self, job: PreheatJob) -> None:
        await self._r.hset(self._k("jobs"), job.id, _dumps(job.to_json()))

    @_translated
    async def get_job(self, job_id: str) -> PreheatJob | None:
        raw = await self._r.hget(self._k("jobs"), job_id)
        return PreheatJob.from_json(json.loads(raw)) if raw else None

    @_translated
    async def list_jobs(self) -> list[PreheatJob]:
        return [PreheatJob.from_json(json.loads(v)) for v in await self._r.hvals(self._k("jobs"))]

    @_translated
    async def delete_job(self, job_id: str) -> None:
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k("jobs"), job_id)
            pipe.delete(self._k("jobrep", job_id))
            await pipe.execute()

    @_translated
    async def put_report(self, job_id: str, report: PreheatReport) -> None:
        await self._r.hset(self._k("jobrep", job_id), report.agent_id, _dumps(report.to_json()))

    @_translated
    async def reports(self, job_id: str) -> list[PreheatReport]:
        raw = await self._r.hvals(self._k("jobrep", job_id))
        return [PreheatReport.from_json(json.loads(v)) for v in raw]
