-- fail: active -> retry (due retry_in_ms from now, retried + 1) when a retry is asked for and retries are
-- left, else active -> dead. The error becomes last_error either way.
-- KEYS: streams, tasks, leases, scheduled, retry, dead, signal, consumers
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 task id, 5 error, 6 retry_in_ms ('' = no retry)
-- Returns the new state letter ('r' or 'd'), or '' when the task is not active (no change).
--#include lib/record.lua
--#include lib/history.lua
local now, group, id, retry_in = clock(ARGV[1]), ARGV[2], ARGV[4], ARGV[6]
redis.call('HSET', K.consumers, ARGV[3], now)
local h = parse(redis.call('HGET', K.tasks, id))
if not h or h.state ~= 'a' then return '' end
unlink(KEYS[1 + h.priority], group, h.sid)
redis.call('ZREM', K.leases, id)
h.sid, h.consumer, h.error = '', '', ARGV[5]
if retry_in ~= '' and h.retried < h.max_retry then
  local retry_at = add_ms(now, retry_in)
  h.state, h.retried, h.due = 'r', h.retried + 1, retry_at
  signal_if_earliest(K.scheduled, K.retry, K.signal, retry_at)
  redis.call('ZADD', K.retry, retry_at, id)
else
  h.state, h.ended = 'd', now
  redis.call('ZADD', K.dead, now, id)
end
redis.call('HSET', K.tasks, id, build(h))
history(id, h.state, now, h.retried, h.error)
return h.state
