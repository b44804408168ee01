"""The Lua scripts of the Redis backend: each checks and writes the record in one atomic step.

:func:`scripts` returns them for one way of announcing a write: ``PUBLISH`` (a single server or
Sentinel), ``SPUBLISH`` (sharded pub/sub on a Redis >= 7 Cluster: the message goes only to the
shard that owns the election's slot) or ``None`` (the script writes and does not announce; the
backend publishes itself once ``WAIT`` has acknowledged the write, option ``wait_replicas``).
"""

from __future__ import annotations

import functools
from typing import Literal

from ..transitions import CLOCK_LAG_MS

__all__ = ["Publish", "scripts"]

#: How a write is announced: see the module docstring.
Publish = Literal["PUBLISH", "SPUBLISH"] | None

# Shared by every script: load(key) returns the decoded record (or nil) and its version as the
# engine counts it: 0 when the key is missing, -1 when it holds anything that is not a record.
# The checks mirror celery_leaderfeed.record.decode_record.
_PRELUDE = """
local FORMAT = 'leaderfeed/1'
local function str_or_null(v) return v == nil or v == cjson.null or type(v) == 'string' end
local function count(v) return type(v) == 'number' and v >= 1 and math.floor(v) == v end
-- Returns the record (or nil), its version and what to report: the raw value, or the key's
-- type when it is not a string.
local function load(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return nil, 0, false end
  if kind ~= 'string' then return nil, -1, 'type:' .. kind end
  local raw = redis.call('GET', key)
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' or rec['format'] ~= FORMAT then return nil, -1, raw end
  if not (count(rec['term']) and count(rec['version'])) then return nil, -1, raw end
  if not (str_or_null(rec['holder']) and str_or_null(rec['token'])
          and str_or_null(rec['nominee'])) then return nil, -1, raw end
  local no_holder = rec['holder'] == nil or rec['holder'] == cjson.null
  local no_token = rec['token'] == nil or rec['token'] == cjson.null
  if no_holder ~= no_token then return nil, -1, raw end
  local at = rec['renewed_at']
  if not (at == nil or at == cjson.null or type(at) == 'number') then return nil, -1, raw end
  return rec, rec['version'], raw
end
-- Whole milliseconds: cjson keeps 14 significant digits, so finer times would be rounded
-- in the stored record and no longer match the term minted from them.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function now() return now_ms() / 1000 end
-- This server's history: a restart changes the run id, a promotion the replication id.
local here_cached
local function here()
  if not here_cached then
    local server = redis.call('INFO', 'server')
    local replication = redis.call('INFO', 'replication')
    here_cached = (string.match(server, 'run_id:(%x+)') or '?') .. '/'
      .. (string.match(replication, 'master_replid:(%x+)') or '?')
  end
  return here_cached
end
-- 1 when the record was written under another history (it may have been rolled back).
local function suspect(rec)
  if rec and rec['history'] ~= here() then return 1 end
  return 0
end
local function store(key, channel, rec)
  rec['format'] = FORMAT
  rec['history'] = here()
  local raw = cjson.encode(rec)
  redis.call('SET', key, raw)
  redis.call('PUBLISH', channel, raw)
  return raw
end
local function null_if_empty(v) if v == '' then return cjson.null end return v end
-- The trusted record held under term and token, its version and now; else nil and the refusal
-- (renewals and resignations share it: neither may touch a suspect or another holder's record).
local function held(key, term, token)
  local rec, version, raw = load(key)
  local t = now()
  local doubt = suspect(rec)
  if not rec or doubt == 1 or rec['term'] ~= tonumber(term) or rec['token'] ~= token then
    return nil, {0, raw, tostring(t), doubt}
  end
  return rec, version, t
end
"""

# Every script on the record returns {ok, record or 'type:KIND' or false, time, doubt}: doubt is
# 1 when the record found was suspect (a claim that went ahead replaced it).

# KEYS[1] record.
_READ = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
return {0, raw, tostring(now()), suspect(rec)}
"""
)

# KEYS[1] record; ARGV channel, expected version, holder, token, min term, min version.
# Take the record if its version is still the one the claimer saw (transitions.claimed).
_CLAIM = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
local fresh = now_ms()
local t = fresh / 1000
local doubt = suspect(rec)
if version ~= tonumber(ARGV[2]) then return {0, raw, tostring(t), doubt} end
-- Over an empty store or a suspect record term and version start at the clock in ms, and they
-- never fall further than LAG below it: they rise even after a loss or a rollback.
local floor = fresh
if rec and doubt == 0 then floor = fresh - LAG end
local written = store(KEYS[1], ARGV[1], {
  holder = ARGV[3], token = ARGV[4], nominee = cjson.null, renewed_at = t,
  term = math.max(rec and (rec['term'] + 1) or fresh, floor, tonumber(ARGV[5])),
  version = math.max(rec and (version + 1) or fresh, floor, tonumber(ARGV[6]))})
return {1, written, tostring(t), doubt}
"""
)

# KEYS[1] record; ARGV channel, term, token. Extend the lease of the holder of that term.
_RENEW = (
    _PRELUDE
    + """
local rec, version, t = held(KEYS[1], ARGV[2], ARGV[3])
if not rec then return version end  -- the refusal
rec['version'] = version + 1
rec['renewed_at'] = t
if rec['nominee'] == rec['holder'] then rec['nominee'] = cjson.null end
return {1, store(KEYS[1], ARGV[1], rec), tostring(t), 0}
"""
)

# KEYS[1] record; ARGV channel, term, token, nominee ('' for none). Leave the record vacant.
_RESIGN = (
    _PRELUDE
    + """
local rec, version, t = held(KEYS[1], ARGV[2], ARGV[3])
if not rec then return version end  -- the refusal
return {1, store(KEYS[1], ARGV[1], {
  holder = cjson.null, token = cjson.null, nominee = null_if_empty(ARGV[4]),
  term = rec['term'], version = version + 1, renewed_at = t}), tostring(t), 0}
"""
)

# KEYS[1] record; ARGV channel, expected version, nominee. Ask for a new leader.
_NOMINATE = (
    _PRELUDE
    + """
local rec, version, raw = load(KEYS[1])
local t = now()
local doubt = suspect(rec)
if not rec or doubt == 1 or version ~= tonumber(ARGV[2]) then
  return {0, raw, tostring(t), doubt}
end
rec['nominee'] = ARGV[3]
rec['version'] = version + 1
rec['renewed_at'] = t
return {1, store(KEYS[1], ARGV[1], rec), tostring(t), 0}
"""
)

# KEYS[1] record, KEYS[2] schedule hash; ARGV term, token, entry, has expected ('1'/'0'),
# expected, new. Write one entry only while term/token hold the record. -> 1 or 0
_WRITE_ENTRY = (
    _PRELUDE
    + """
local rec = load(KEYS[1])
if not rec or suspect(rec) == 1 then return 0 end
if rec['term'] ~= tonumber(ARGV[1]) or rec['token'] ~= ARGV[2] then return 0 end
local stored = redis.call('HGET', KEYS[2], ARGV[3])
if ARGV[4] == '1' then
  if stored ~= ARGV[5] then return 0 end
elseif stored then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[6])
return 1
"""
)

# KEYS[1] the mark; ARGV value, time to live in ms. Set the mark unless it is set (Redis
# expires it by its own clock). -> nil when this call set it, else the value already there.
# GET then SET ... NX PX, not SET ... NX GET: that needs Redis >= 7 and the backend needs 5.
# A mark that already holds ARGV's own value (a retry after a lost reply, or after a write the
# replicas did not acknowledge) is written again with its time to live unchanged, so that a WAIT
# after the script covers it: without that write a retry would pass unacknowledged.
_MARK_ONCE = """
local held = redis.call('GET', KEYS[1])
if held then
  if held == ARGV[1] then
    local left = redis.call('PTTL', KEYS[1])
    if left > 0 then redis.call('PEXPIRE', KEYS[1], left) end
  end
  return held
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
return false
"""


_PUBLISHED = "  redis.call('PUBLISH', channel, raw)\n"
_SOURCES = {
    "read": _READ,
    "claim": _CLAIM.replace("LAG", str(CLOCK_LAG_MS)),
    "renew": _RENEW,
    "resign": _RESIGN,
    "nominate": _NOMINATE,
    "write_entry": _WRITE_ENTRY,
    "mark_once": _MARK_ONCE,
}


@functools.cache
def scripts(publish: Publish) -> dict[str, str]:
    """Every script by name, each announcing its write with ``publish`` (see module docstring)."""
    assert all(_PUBLISHED in source for source in (_CLAIM, _RENEW, _RESIGN, _NOMINATE))
    announce = f"  redis.call('{publish}', channel, raw)\n" if publish else ""
    return {name: source.replace(_PUBLISHED, announce) for name, source in _SOURCES.items()}
