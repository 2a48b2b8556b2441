-- fail: active -> retry (due retry_in_ms from now, retried + 1) when a retry is asked for and retries are
-- left, else active -> dead, storing the error's detail. The error becomes last_error either way;
-- the outcome is counted in the per-minute history. A task whose cancel was requested while it
-- ran ends cancelled instead (never retried or dead).
-- KEYS: streams, tasks, leases, scheduled, retry, dead, signal, consumers, cancelled, unique,
--       unique_exp, minutes, minutes_index
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 task id, 5 error, 6 retry_in_ms ('' = no
--       retry), 7 error detail kept if it dies ('' = none), 8 ended channel ('' = none),
--       9 history retention ms
-- Returns the new state letter ('r', 'd' or 'x'), or '' when the task is not active (no change).
--#include lib/record.lua
--#include lib/minutes.lua
local now, group, id, retry_in = clock(ARGV[1]), ARGV[2], ARGV[4], ARGV[6]
redis.call('HSET', K.consumers, ARGV[3], now)
local h = parse(redis.call('HGET', K.tasks, id))
if not h or h.state ~= 'a' then return '' end
unlink(KEYS[1 + h.priority], group, h.sid)
redis.call('ZREM', K.leases, id)
if h.opt.cancel then
  end_cancelled(h, id, now, K.tasks, K.cancelled, K.unique, K.unique_exp)
  publish_ended(ARGV[8], {id})
  return 'x'
end
h.sid, h.consumer, h.error = '', '', ARGV[5]
if retry_in ~= '' and h.retried < h.max_retry then
  local retry_at = add_ms(now, retry_in)
  h.state, h.retried, h.due = 'r', h.retried + 1, retry_at
  signal_if_earliest(K.scheduled, K.retry, K.signal, retry_at)
  redis.call('ZADD', K.retry, retry_at, id)
else
  h.state, h.ended = 'd', now
  if ARGV[7] ~= '' then h.opt.failure = ARGV[7] end
  redis.call('ZADD', K.dead, now, id)
  publish_ended(ARGV[8], {id})
end
redis.call('HSET', K.tasks, id, build(h))
local task_type = envelope_type(h.env, 1)
count_outcomes(K.minutes, K.minutes_index, now, ARGV[9], h.state == 'r' and 'f' or 'd', 1,
  task_type and {[task_type] = 1} or {})
return h.state
