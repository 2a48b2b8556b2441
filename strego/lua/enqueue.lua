-- enqueue: new tasks -> pending (XADD to their priority stream) or scheduled (due later),
-- taking each unique key in the same step.
-- KEYS: streams, tasks, scheduled, retry, unique, unique_exp, signal, completed, dead, cancelled,
--       ready, registered
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 completed_ttl_ms, 4 dead_ttl_ms, then 3 per task:
--       id, options, envelope; options '' = the defaults (pending now, priority 0, max_retry 3,
--       no unique key), else 'due,priority,max_retry,unique_ttl_ms,unique_key' (due '' = now,
--       '+ms' = that long from now by this script's clock, 'ms' = that instant, pending when
--       not after now; unique_key '' = none). Three arguments, not seven, keep a big batch
--       cheap to send.
-- Returns one reply per task: {'OK', 'p'} (pending) | {'OK', due ms} (scheduled) |
--         {'DUPLICATE', holder_id} | {'ID_CONFLICT', ''}; then one more element, 'REGISTER', when
--         a task was stored and the queue's `registered` flag was unset (lib/registered.lua): the
--         caller SADDs the queue to the registry
-- All or nothing: every key the call will write is checked before the first write, so a key of
-- another type (written by something else) fails the whole call with WRONGTYPE, nothing written.
--#include lib/record.lua
--#include lib/ready.lua
--#include lib/history.lua
--#include lib/registered.lua
local now, group = clock(ARGV[1]), ARGV[2]
local refused = ready_refused(K.ready)  -- before any write
if refused then return refused end
-- First pass, reads only: each task's options and old record (a foreign tasks key fails here),
-- and the type each key written below must have.
local tasks, want = {}, {}
for i = 5, #ARGV, 3 do
  local t = {id = ARGV[i], opts = ARGV[i + 1], env = ARGV[i + 2], due = '', prio = 0,
             max_retry = 3, uttl = 0, ukey = ''}
  if t.opts ~= '' then
    t.due, t.prio, t.max_retry, t.uttl, t.ukey =
      string.match(t.opts, '^(%+?%d*),(%-?%d+),(%-?%d+),(%-?%d+),(.*)$')
    if string.sub(t.due, 1, 1) == '+' then t.due = add_ms(now, string.sub(t.due, 2)) end
    if t.due ~= '' and tonumber(t.due) <= tonumber(now) then t.due = '' end
  end
  local rec = redis.call('HGET', K.tasks, t.id)
  t.old = parse(rec)
  -- a record under this id that does not parse is still a task: the id is taken
  t.unreadable = rec and not t.old
  if t.old and expired(t.old, now, ARGV[3], ARGV[4]) then
    t.place = ({c = K.completed, d = K.dead, x = K.cancelled})[t.old.state]
    want[t.place] = 'zset'
  end
  if t.due == '' then
    want[KEYS[1 + tonumber(t.prio)]] = 'stream'
  else
    want[K.scheduled], want[K.retry], want[K.signal] = 'zset', 'zset', 'stream'
  end
  if t.ukey ~= '' then want[K.unique], want[K.unique_exp] = 'hash', 'zset' end
  tasks[#tasks + 1] = t
end
-- (one task with the defaults and no old record writes only its stream, then the tasks hash
-- already read and the ready key already read: its first write fails first, no check needed)
local lone = #tasks == 1 and tasks[1].opts == '' and not tasks[1].place
for key, kind in pairs(lone and {} or want) do
  local found = redis.call('TYPE', key)
  found = type(found) == 'table' and found.ok or found
  if found ~= 'none' and found ~= kind then
    return redis.error_reply('WRONGTYPE Operation against a key holding the wrong kind of value')
  end
end
-- Second pass: the writes.
local out, pushed, taken = {}, false, {}
local hist_p, hist_s = {}, {}  -- history: the tasks made pending, scheduled
local OK_PENDING = {'OK', 'p'}
for _, t in ipairs(tasks) do
  local id, ukey, reply = t.id, t.ukey, nil
  if taken[id] or t.unreadable then
    reply = {E_ID_CONFLICT, ''}  -- the same id earlier in this call, or a record kept as it is
  elseif t.old then
    if t.place then
      -- retention ended: the old task is gone, its id free again
      redis.call('ZREM', t.place, id)
      redis.call('HDEL', K.tasks, id)
    else
      reply = {E_ID_CONFLICT, ''}
    end
  end
  if not reply and ukey ~= '' then
    local holder = redis.call('HGET', K.unique, ukey)
    if holder then
      local until_ms = redis.call('ZSCORE', K.unique_exp, ukey)
      local h = parse(redis.call('HGET', K.tasks, holder))
      if until_ms and tonumber(until_ms) > tonumber(now) and h
          and h.state ~= 'c' and h.state ~= 'x' then
        reply = {E_DUPLICATE, holder}
      end
    end
  end
  if not reply and t.opts == '' then
    -- the defaults, pending now (most tasks): the short record straight from the entry id
    redis.call('HSET', K.tasks, id, short_record(push(KEYS[1], group, id), t.env))
    pushed = true
    reply = OK_PENDING
  elseif not reply then
    local h = {state = 'p', retried = 0, deliveries = 0, started = '', ended = '', due = '',
               max_retry = tonumber(t.max_retry), priority = tonumber(t.prio), sid = '',
               consumer = '', error = '', unique = ukey, env = t.env}
    if t.due == '' then
      h.sid = push(KEYS[1 + h.priority], group, id)
      pushed = true
    else
      h.state, h.due = 's', t.due
      signal_if_earliest(K.scheduled, K.retry, K.signal, t.due)
      redis.call('ZADD', K.scheduled, t.due, id)
    end
    if ukey ~= '' then
      redis.call('HSET', K.unique, ukey, id)
      redis.call('ZADD', K.unique_exp, add_ms(now, t.uttl), ukey)
    end
    redis.call('HSET', K.tasks, id, build(h))
    reply = {'OK', h.state == 's' and t.due or 'p'}
  end
  if reply[1] == 'OK' then taken[id] = true end
  if HISTORY and reply[1] == 'OK' then
    local h = reply[2] == 'p' and hist_p or hist_s
    h[#h + 1], h[#h + 2] = id, t.env
  end
  out[#out + 1] = reply
end
if pushed then ready_moved() end
history_pairs('p', now, hist_p, 0)
history_pairs('s', now, hist_s, 0)
if next(taken) and newly_registered(K.registered) then out[#out + 1] = 'REGISTER' end
return out
