-- lib/record.lua: helpers shared by every script (included when scripts are loaded).
-- Key-independent: they only touch keys handed to them, which the caller took from KEYS.
--
-- Record (the value of a task in the queue's `tasks` hash):
--   <state><retried>,<deliveries>,<started>,<ended>,<due>,<max_retry>,<priority>,<sid>,
--   <consumer_len>,<error_len>,<unique_len>;<consumer><error><unique_key><envelope>
-- state is one letter (s p a r d c x); an empty field is its default (retried, deliveries,
-- priority and lengths 0, max_retry 3, times none), so a fresh task's header is short; sid is the
-- stream entry id of a pending or active task. A pending task whose header is all defaults but
-- its sid (a fresh one) is written short, `P<sid ms>-<sid seq>;<envelope>` with both numbers in
-- base 36, so that the record of a small task fits a 32-byte allocation in Redis. The envelope
-- (type, payload, options) belongs to Python and is never parsed here: payloads stay opaque bytes.

--#include lib/clock.lua

local HEADER = '^(%a)(%d*),(%d*),(%d*),(%d*),(%d*),(%d*),(%d*),([%d%-]*),(%d*),(%d*),(%d*);()'

-- Return codes (mapped to typed errors by strego/backends/redis/codes.py).
local E_DUPLICATE = 'DUPLICATE'
local E_ID_CONFLICT = 'ID_CONFLICT'
local E_PAUSED = 'PAUSED'

-- the short header of a fresh pending task (see above)
local SHORT = '^P(%w+)%-(%w+);()'

-- base 36, two digits a step (on enqueue's hot path: no loop of string builds per digit)
local B36 = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e',
  'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x',
  'y', 'z'}
local function base36(n)
  if n < 36 then return B36[n] end
  local lo = n % 1296
  local d = lo % 36
  if n < 1296 then return B36[(lo - d) / 36] .. B36[d] end
  return base36((n - lo) / 1296) .. B36[(lo - d) / 36] .. B36[d]
end

-- The short record of a fresh pending task of stream entry `sid`; nil if `sid` is not an id.
local function short_record(sid, env)
  local ms, seq = string.match(sid, '^(%d+)%-(%d+)$')
  if not ms then return nil end
  return table.concat({'P', base36(tonumber(ms)), '-', base36(tonumber(seq)), ';', env})
end

-- The stream entry id a short header names (its two base-36 numbers).
local function short_sid(ms, seq)
  return string.format('%d-%d', tonumber(ms, 36), tonumber(seq, 36))
end

local function parse(rec)
  if not rec then return nil end
  local ms, seq, at = string.match(rec, SHORT)
  if ms then
    return {
      state = 'p', retried = 0, deliveries = 0, started = '', ended = '', due = '',
      max_retry = 3, priority = 0,
      sid = short_sid(ms, seq),
      consumer = '', error = '', unique = '', env = string.sub(rec, at),
    }
  end
  local s, r, d, st, en, due, mr, pr, sid, cl, el, ul, pos = string.match(rec, HEADER)
  if not s then return nil end
  cl, el, ul = tonumber(cl) or 0, tonumber(el) or 0, tonumber(ul) or 0
  return {
    state = s, retried = tonumber(r) or 0, deliveries = tonumber(d) or 0, started = st,
    ended = en, due = due, max_retry = tonumber(mr) or 3, priority = tonumber(pr) or 0, sid = sid,
    consumer = string.sub(rec, pos, pos + cl - 1),
    error = string.sub(rec, pos + cl, pos + cl + el - 1),
    unique = string.sub(rec, pos + cl + el, pos + cl + el + ul - 1),
    env = string.sub(rec, pos + cl + el + ul),
  }
end

-- a number as written in a header: empty when it is the field's default
local function num(n, default)
  if n == default then return '' end
  return string.format('%d', n)
end

local function build(h)
  if h.state == 'p' and h.retried == 0 and h.deliveries == 0 and h.started == ''
      and h.ended == '' and h.due == '' and h.max_retry == 3 and h.priority == 0
      and h.consumer == '' and h.error == '' and h.unique == '' then
    local short = short_record(h.sid, h.env)
    if short then return short end
  end
  return table.concat({
    h.state, num(h.retried, 0), ',', num(h.deliveries, 0), ',', h.started, ',', h.ended, ',',
    h.due, ',', num(h.max_retry, 3), ',', num(h.priority, 0), ',', h.sid, ',',
    num(#h.consumer, 0), ',', num(#h.error, 0), ',', num(#h.unique, 0), ';',
    h.consumer, h.error, h.unique, h.env,
  })
end

-- A record whose header does not parse can never run or be moved: it goes to dead (priority 0,
-- no retries) under a fresh header with this reason, its old bytes kept whole as the envelope.
local UNREADABLE = 'unreadable task record: its header does not parse'
local function bury_unreadable(tasks, dead, id, rec, now)
  redis.call('ZADD', dead, now, id)
  redis.call('HSET', tasks, id, build({
    state = 'd', retried = 0, deliveries = 0, started = '', ended = now, due = '',
    max_retry = 0, priority = 0, sid = '', consumer = '', error = UNREADABLE, unique = '',
    env = rec,
  }))
end

-- Drop the delivered (pending-list) entry naming task `id` from `stream`, found by walking the
-- group's pending list: for an active task whose header no longer tells its stream entry.
-- Bounded: looks at `budget` entries at most and returns the budget left (an entry not reached
-- stays an orphan in the pending list: never delivered again, counted as pending by queue_info).
local function unlink_delivered(stream, group, id, budget)
  if redis.call('EXISTS', stream) == 0 then return budget end
  local from = '-'
  while budget > 0 do
    local page = redis.call('XPENDING', stream, group, from, '+', math.min(100, budget))
    budget = budget - #page
    for _, p in ipairs(page) do
      local entry = redis.call('XRANGE', stream, p[1], p[1])[1]
      if entry and entry[2][2] == id then
        redis.call('XACK', stream, group, p[1])
        redis.call('XDEL', stream, p[1])
        return budget
      end
    end
    if #page < 100 then return budget end
    from = '(' .. page[#page][1]
  end
  return budget
end

local function add_ms(ms, delta)
  return string.format('%d', tonumber(ms) + tonumber(delta))
end

-- XREADGROUP's reply for one stream: {{key, entries}}. Some emulators drop the outer list.
local function read_entries(reply)
  if not reply or not reply[1] then return {} end
  if type(reply[1]) == 'string' then return reply[2] or {} end
  return reply[1][2] or {}
end

-- Append a task id to a priority stream, creating the stream with its group on first use.
local function push(stream, group, id)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  end
  return redis.call('XADD', stream, '*', 't', id)
end

-- Remove an entry from its stream and from the group's pending list.
local function unlink(stream, group, sid)
  if sid ~= '' and redis.call('EXISTS', stream) == 1 then
    redis.call('XACK', stream, group, sid)
    redis.call('XDEL', stream, sid)
  end
end

-- Release a unique key if `id` still holds it.
local function release_unique(unique, unique_exp, ukey, id)
  if ukey ~= '' and redis.call('HGET', unique, ukey) == id then
    redis.call('HDEL', unique, ukey)
    redis.call('ZREM', unique_exp, ukey)
  end
end

-- The earliest due time among the scheduled and retry sets, or nil.
local function earliest(scheduled, retry)
  local best = nil
  for _, key in ipairs({scheduled, retry}) do
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if first[2] and (best == nil or tonumber(first[2]) < tonumber(best)) then best = first[2] end
  end
  return best
end

-- Wake schedulers when `due` is earlier than anything waiting (call before adding it).
local function signal_if_earliest(scheduled, retry, signal, due)
  local best = earliest(scheduled, retry)
  if best == nil or tonumber(due) < tonumber(best) then
    redis.call('XADD', signal, 'MAXLEN', '~', '16', '*', 'd', due)
  end
end

-- Is a terminal task's retention over (completed/cancelled after completed_ttl, dead after dead_ttl)?
local function expired(h, now, completed_ttl, dead_ttl)
  if h.ended == '' then return false end
  local ttl
  if h.state == 'c' or h.state == 'x' then ttl = completed_ttl
  elseif h.state == 'd' then ttl = dead_ttl
  else return false end
  return tonumber(h.ended) + tonumber(ttl) <= tonumber(now)
end

-- One command `name key [extra] items...`, split so no call passes more than unpack can take.
-- `items` holds whole members (pairs for HSET/ZADD: its length is even, and so is CHUNK).
local CHUNK = 1000
local unpack = unpack or table.unpack  -- Lua 5.1 (Redis) or 5.4 (some emulators)
local function call_chunked(name, key, items, extra)
  for first = 1, #items, CHUNK do
    local last = math.min(first + CHUNK - 1, #items)
    if extra then
      redis.call(name, key, extra, unpack(items, first, last))
    else
      redis.call(name, key, unpack(items, first, last))
    end
  end
end
