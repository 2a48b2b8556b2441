-- promote: scheduled and retry tasks that are due (due <= now) -> pending (XADD), at most
-- `limit` per call; and the end of retention: completed and cancelled tasks older than
-- completed_ttl_ms, dead ones older than dead_ttl_ms and expired unique keys are removed
-- (at most `limit` of each per call).
-- KEYS: streams, tasks, scheduled, retry, dead, completed, cancelled, unique, unique_exp, signal,
--       ready
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 completed_ttl_ms, 4 dead_ttl_ms, 5 limit
-- Returns {ms from now until the earliest due time still waiting ('' = none; 0 when more are
--          due than `limit`; relative, so the caller needs no clock of its own),
--          newest signal entry id ('0-0' = none)}
--#include lib/record.lua
--#include lib/ready.lua
--#include lib/history.lua
local now, group, limit = clock(ARGV[1]), ARGV[2], tonumber(ARGV[5])
local more, pushed = false, false
local refused = ready_refused(K.ready)  -- before any write
if refused then return refused end
for _, set in ipairs({K.scheduled, K.retry}) do
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, limit)
  if #due == limit then more = true end
  for _, id in ipairs(due) do
    redis.call('ZREM', set, id)
    local rec = redis.call('HGET', K.tasks, id)
    local h = parse(rec)
    if rec and not h then bury_unreadable(K.tasks, K.dead, id, rec, now) end
    if h and (h.state == 's' or h.state == 'r') then
      h.state, h.due = 'p', ''
      h.sid = push(KEYS[1 + h.priority], group, id)
      pushed = true
      redis.call('HSET', K.tasks, id, build(h))
      history(id, 'p', now, h.retried)
    end
  end
end
for _, spec in ipairs({{K.completed, ARGV[3]}, {K.cancelled, ARGV[3]}, {K.dead, ARGV[4]}}) do
  local set, ttl = spec[1], spec[2]
  local gone = redis.call('ZRANGEBYSCORE', set, '-inf', add_ms(now, -tonumber(ttl)),
    'LIMIT', 0, limit)
  for _, id in ipairs(gone) do
    redis.call('ZREM', set, id)
    redis.call('HDEL', K.tasks, id)
  end
end
local stale_keys = redis.call('ZRANGEBYSCORE', K.unique_exp, '-inf', now, 'LIMIT', 0, limit)
for _, ukey in ipairs(stale_keys) do
  redis.call('ZREM', K.unique_exp, ukey)
  redis.call('HDEL', K.unique, ukey)
end
if pushed then ready_moved() end
local next_due = ''
if more then
  next_due = 0
else
  local due = earliest(K.scheduled, K.retry)
  if due then next_due = math.max(0, tonumber(due) - tonumber(now)) end
end
local newest = redis.call('XREVRANGE', K.signal, '+', '-', 'COUNT', 1)
return {next_due, newest[1] and newest[1][1] or '0-0'}
