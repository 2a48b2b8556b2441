-- enqueue: new tasks -> pending (XADD to their priority stream) or scheduled (due later),
-- taking each unique key in the same step.
-- KEYS: 1 tasks, 2 scheduled, 3 retry, 4 unique, 5 unique_exp, 6 signal, 7 completed, 8 dead,
--       9 cancelled, 10..20 stream for priority 0..10, 21 ready (INCRed once when any task
--       became pending, so fetchers that found the queue idle look again)
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 completed_ttl_ms, 4 dead_ttl_ms, then 3 per task:
--       id, options, envelope; options '' = the defaults (pending now, priority 0, max_retry 3,
--       no unique key), else 'due,priority,max_retry,unique_ttl_ms,unique_key' (due '' = now,
--       '+ms' = that long from now by this script's clock, 'ms' = that instant, pending when
--       not after now; unique_key '' = none). Three arguments, not seven, keep a big batch
--       cheap to send.
-- Returns one reply per task: {'OK', 'p'} (pending) | {'OK', due ms} (scheduled) |
--         {'DUPLICATE', holder_id} | {'ID_CONFLICT', ''}
--#include lib/record.lua
local now, group = clock(ARGV[1]), ARGV[2]
-- read before any write: a foreign (non-string) ready key fails here, leaving nothing behind
redis.call('GET', KEYS[21])
local out, pushed = {}, false
local OK_PENDING = {'OK', 'p'}
for i = 5, #ARGV, 3 do
  local id, opts, env = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local due, prio, max_retry, uttl, ukey = '', 0, 3, 0, ''
  if opts ~= '' then
    due, prio, max_retry, uttl, ukey =
      string.match(opts, '^(%+?%d*),(%-?%d+),(%-?%d+),(%-?%d+),(.*)$')
    if string.sub(due, 1, 1) == '+' then due = add_ms(now, string.sub(due, 2)) end
    if due ~= '' and tonumber(due) <= tonumber(now) then due = '' end
  end
  local reply = nil
  local old = parse(redis.call('HGET', KEYS[1], id))
  if old then
    if expired(old, now, ARGV[3], ARGV[4]) then
      -- retention ended: the old task is gone, its id free again
      local place = ({c = KEYS[7], d = KEYS[8], x = KEYS[9]})[old.state]
      redis.call('ZREM', place, id)
      redis.call('HDEL', KEYS[1], id)
    else
      reply = {E_ID_CONFLICT, ''}
    end
  end
  if not reply and ukey ~= '' then
    local holder = redis.call('HGET', KEYS[4], ukey)
    if holder then
      local until_ms = redis.call('ZSCORE', KEYS[5], ukey)
      local h = parse(redis.call('HGET', KEYS[1], holder))
      if until_ms and tonumber(until_ms) > tonumber(now) and h
          and h.state ~= 'c' and h.state ~= 'x' then
        reply = {E_DUPLICATE, holder}
      end
    end
  end
  if not reply and opts == '' then
    -- the defaults, pending now (most tasks): the short record straight from the entry id
    redis.call('HSET', KEYS[1], id, short_record(push(KEYS[10], group, id), env))
    pushed = true
    reply = OK_PENDING
  elseif not reply then
    local h = {state = 'p', retried = 0, deliveries = 0, started = '', ended = '', due = '',
               max_retry = tonumber(max_retry), priority = tonumber(prio), sid = '',
               consumer = '', error = '', unique = ukey, env = env}
    if due == '' then
      h.sid = push(KEYS[10 + h.priority], group, id)
      pushed = true
    else
      h.state, h.due = 's', due
      signal_if_earliest(KEYS[2], KEYS[3], KEYS[6], due)
      redis.call('ZADD', KEYS[2], due, id)
    end
    -- the stream or zset write comes first: if it fails (a foreign key, OOM) nothing was written
    if ukey ~= '' then
      redis.call('HSET', KEYS[4], ukey, id)
      redis.call('ZADD', KEYS[5], add_ms(now, uttl), ukey)
    end
    redis.call('HSET', KEYS[1], id, build(h))
    reply = {'OK', h.state == 's' and due or 'p'}
  end
  out[#out + 1] = reply
end
if pushed then redis.call('INCR', KEYS[21]) end
return out
