-- lib/record.lua: the task record, the one Lua definition of it (parse, build, and the two
-- hot-path shortcuts `started_fresh` and `completed`), and helpers shared by every script
-- (included when scripts are loaded). Key-independent: they only touch keys handed to them,
-- which the caller took from KEYS. Python reads the same format in strego/backends/redis/record.py.
--
-- Record (the value of a task in the queue's `tasks` hash):
--   <state><retried>,<deliveries>,<started>,<ended>,<due>,<max_retry>,<priority>,<sid>,
--   <consumer_len>,<error_len>,<unique_len>[,<tag><len>]...;
--   <consumer><error><unique_key>[<optional values>]<envelope>
-- state is one letter (s p a r d c x); an empty field is its default (retried, deliveries,
-- priority and lengths 0, max_retry 3, times none), so a fresh task's header is short; sid is the
-- stream entry id of a pending or active task. After the 11 fixed fields come zero or more
-- optional fields, each `,<tag><len>` (one letter, a byte length, empty = 0) with its value after
-- the unique key, in header order: a record without any (all of format v1) is the same bytes in
-- both formats. OPTIONAL below names the tags this code knows; a tag it does not know (written
-- by newer code) is kept byte for byte, in place, by every transition.
-- A pending task whose header is all defaults but its sid (a fresh one) is written short,
-- `P<sid ms>-<sid seq>;<envelope>` with both numbers in base 36, so that the record of a small
-- task fits a 32-byte allocation in Redis. The envelope (type, payload, options) belongs to
-- Python and is never parsed here, but for its task type (`envelope_type`, for the per-minute
-- history): payloads stay opaque bytes.

--#include lib/clock.lua

local HEADER =
  '^(%a)(%d*),(%d*),(%d*),(%d*),(%d*),(%d*),(%d*),([%d%-]*),(%d*),(%d*),(%d*)([,%a%d]*);()'

-- The optional fields this code knows, in the order build() appends new ones: {tag, name}.
-- parse() gives their values as h.opt[name]; build() writes those set. Adding a field is one
-- line here and one in record.py's OPTIONAL (docs/architecture.md, "How to add a field").
local OPTIONAL = {
  {'R', 'result'},   -- a completed task's return value (ack)
  {'F', 'failure'},  -- a dead task's error: type, message, traceback as JSON (fail)
  {'C', 'cancel'},   -- cancel requested while active (cancel); the holder stops the task
}
local NAME_OF = {}
for _, f in ipairs(OPTIONAL) do NAME_OF[f[1]] = f[2] end
local NONE = {}

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

-- The optional fields of a header (`part`: its `,<tag><len>` entries) whose values start at
-- `pos`: their tags in order, {name = value} of the known ones, {tag = value} of the others,
-- and where the envelope starts; nil when the part is malformed or a tag repeats.
local function parse_opts(rec, part, pos)
  if (string.gsub(part, ',%a%d*', '')) ~= '' then return nil end
  local tags, opt, raw = {}, {}, {}
  for tag, len in string.gmatch(part, ',(%a)(%d*)') do
    if raw[tag] or (NAME_OF[tag] and opt[NAME_OF[tag]]) then return nil end
    local n = tonumber(len) or 0
    local value = string.sub(rec, pos, pos + n - 1)
    if #value < n then return nil end
    tags[#tags + 1] = tag
    if NAME_OF[tag] then opt[NAME_OF[tag]] = value else raw[tag] = value end
    pos = pos + n
  end
  return tags, opt, raw, pos
end

local function parse(rec)
  if not rec then return nil end
  local ms, seq, at = string.match(rec, SHORT)
  if ms then
    return {
      state = 'p', retried = 0, deliveries = 0, started = '', ended = '', due = '',
      max_retry = 3, priority = 0,
      sid = short_sid(ms, seq),
      consumer = '', error = '', unique = '', tags = NONE, opt = {}, raw = NONE,
      env = string.sub(rec, at),
    }
  end
  local s, r, d, st, en, due, mr, pr, sid, cl, el, ul, part, pos = string.match(rec, HEADER)
  if not s then return nil end
  cl, el, ul = tonumber(cl) or 0, tonumber(el) or 0, tonumber(ul) or 0
  local h = {
    state = s, retried = tonumber(r) or 0, deliveries = tonumber(d) or 0, started = st,
    ended = en, due = due, max_retry = tonumber(mr) or 3, priority = tonumber(pr) or 0, sid = sid,
    consumer = string.sub(rec, pos, pos + cl - 1),
    error = string.sub(rec, pos + cl, pos + cl + el - 1),
    unique = string.sub(rec, pos + cl + el, pos + cl + el + ul - 1),
    tags = NONE, opt = {}, raw = NONE,
  }
  local env_at = pos + cl + el + ul
  if part ~= '' then
    h.tags, h.opt, h.raw, env_at = parse_opts(rec, part, env_at)
    if not h.tags then return nil end
  end
  h.env = string.sub(rec, env_at)
  return h
end

-- a number as written in a header: empty when it is the field's default
local function num(n, default)
  if n == default then return '' end
  return string.format('%d', n)
end

-- The optional part of h's header and its values: the fields read (h.tags) in their order,
-- known ones from h.opt (nil = removed) and unknown ones as read, then known ones newly set.
local function build_opts(h)
  local head, values, written = {}, {}, {}
  local opt = h.opt or NONE
  for _, tag in ipairs(h.tags or NONE) do
    local name = NAME_OF[tag]
    local value
    if name then value = opt[name] else value = h.raw[tag] end
    written[tag] = true
    if value then
      head[#head + 1] = ',' .. tag .. num(#value, 0)
      values[#values + 1] = value
    end
  end
  for _, f in ipairs(OPTIONAL) do
    local value = opt[f[2]]
    if value and not written[f[1]] then
      head[#head + 1] = ',' .. f[1] .. num(#value, 0)
      values[#values + 1] = value
    end
  end
  return table.concat(head), table.concat(values)
end

local function build(h)
  local opt_head, opt_values = '', ''
  if (h.tags and h.tags[1]) or (h.opt and next(h.opt)) then opt_head, opt_values = build_opts(h) end
  if h.state == 'p' and h.retried == 0 and h.deliveries == 0 and h.started == ''
      and h.ended == '' and h.due == '' and h.max_retry == 3 and h.priority == 0
      and h.consumer == '' and h.error == '' and h.unique == '' and opt_head == '' then
    local short = short_record(h.sid, h.env)
    if short then return short end
  end
  return table.concat({
    h.state, num(h.retried, 0), ',', num(h.deliveries, 0), ',', h.started, ',', h.ended, ',',
    h.due, ',', num(h.max_retry, 3), ',', num(h.priority, 0), ',', h.sid, ',',
    num(#h.consumer, 0), ',', num(#h.error, 0), ',', num(#h.unique, 0), opt_head, ';',
    h.consumer, h.error, h.unique, opt_values, h.env,
  })
end

-- The hot paths of every task: one match and one concatenation each, not parse() and build()
-- (3x dearer). They give the same record parse() and build() would.

-- What every record `started_fresh` makes in one fetch call starts and ends with (built once a
-- call): pass them to it.
local function started_parts(now, consumer)
  return 'a,1,' .. now .. ',,,,,', ',' .. num(#consumer, 0) .. ',,;' .. consumer
end

-- A fresh pending record (the short header) of stream entry `sid`: its active record, started
-- at the time and by the consumer `started_parts` was given; nil for any other record.
local function started_fresh(rec, sid, head, tail)
  local ms, seq, at = string.match(rec, SHORT)
  if not ms or short_sid(ms, seq) ~= sid then
    return nil
  end
  -- one `..` chain is one concatenation, with no table to build
  return head .. sid .. tail .. string.sub(rec, at)
end

-- The stream entry id of a pending record, nil for any other record: a listing looks at up to a
-- thousand records a call, so a pattern match, no parse().
local PENDING_SID = '^p%d*,%d*,%d*,%d*,%d*,%d*,%d*,([%d%-]*),'
local function pending_sid(rec)
  local ms, seq = string.match(rec, SHORT)
  if ms then return short_sid(ms, seq) end
  return string.match(rec, PENDING_SID)
end

-- An active record's completed record (ended now, sid and consumer cleared, the rest kept,
-- optional fields byte for byte), and the sid, priority, unique key, optional part (the
-- `,<tag><len>` entries: '' for none) and envelope position (in `rec`) the ack needs; nil when
-- `rec` is not an active record.
local ACTIVE =
  '^a(%d*),(%d*),(%d*),%d*,(%d*),(%d*),(%d*),([%d%-]*),(%d*),(%d*),(%d*)([,%a%d]*);()'
local function completed(rec, now)
  if not rec then return nil end
  local r, d, st, due, mr, pr, sid, cl, el, ul, part, pos = string.match(rec, ACTIVE)
  if not r then return nil end
  -- where the envelope starts: after the consumer, error, unique key and optional values
  local env_at = pos + (tonumber(cl) or 0) + (tonumber(el) or 0) + (tonumber(ul) or 0)
  if part ~= '' then
    local tags, _, _, opt_end = parse_opts(rec, part, env_at)
    if not tags then return nil end
    env_at = opt_end
  end
  local after_consumer = pos + (tonumber(cl) or 0)
  local unique, ulen = '', tonumber(ul) or 0
  if ulen > 0 then
    local from = after_consumer + (tonumber(el) or 0)
    unique = string.sub(rec, from, from + ulen - 1)
  end
  local new = 'c' .. r .. ',' .. d .. ',' .. st .. ',' .. now .. ',' .. due .. ',' .. mr .. ','
    .. pr .. ',,,' .. el .. ',' .. ul .. part .. ';' .. string.sub(rec, after_consumer)
  return new, sid, tonumber(pr) or 0, unique, part, env_at
end

-- The task type an envelope names (the one envelope field Lua reads, for the per-minute history
-- by type), from position `at` of `rec`; nil when it does not parse. The envelope starts
-- `<created>,<timeout>,<type_len>,<encoding_len>,<labels_len>[,<tag><len>]...;<type>`
-- (strego/backends/redis/record.py): the pattern checks only what it needs, as it runs once per
-- acked task (about 0.4 us).
local ENVELOPE_TYPE = '^%d*,%d*,(%d*),[^;]*;()'
local function envelope_type(rec, at)
  local len, from = string.match(rec, ENVELOPE_TYPE, at)
  if not len then return nil end
  return string.sub(rec, from, from + (tonumber(len) or 0) - 1)
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

-- Append a task id to a priority stream, creating the stream with its group on first use. The
-- entry id's time is when the task became pending (QueueInfo.oldest_pending_age_ms): Redis TIME,
-- or the injected clock when a test injects one (unless the stream already holds a later id).
local function push(stream, group, id)
  if redis.call('EXISTS', stream) == 0 then
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
  end
  if injected_now then
    local sid = redis.pcall('XADD', stream, injected_now .. '-*', 't', id)
    if type(sid) == 'string' then return sid end
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
    -- on Cluster, schedulers wait on the sharded channel named like the stream (same slot)
    if SHARDED_NOTIFY then redis.call('SPUBLISH', signal, due) end
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

-- Tell waiters (pub/sub `channel`, '' for none) that these task ids ended: one message, the ids
-- separated by spaces. A hint only: a waiter reads the record itself.
local function publish_ended(channel, ids)
  if channel ~= '' and ids[1] then redis.call('PUBLISH', channel, table.concat(ids, ' ')) end
end

-- End an active task (parsed into `h`, taken out of its stream and leases) as cancelled: its
-- cancel was requested while it ran (cancel.lua); never retried, never dead.
local function end_cancelled(h, id, now, tasks, cancelled, unique, unique_exp)
  release_unique(unique, unique_exp, h.unique, id)
  h.state, h.ended, h.due, h.sid, h.consumer = 'x', now, '', '', ''
  h.opt.cancel = nil
  redis.call('HSET', tasks, id, build(h))
  redis.call('ZADD', cancelled, now, id)
end
