-- fail: active -> retry (due retry_in_ms from now, retried + 1) when a retry is asked for and retries are
-- left, else active -> dead. The error becomes last_error either way.
-- KEYS: 1 tasks, 2 leases, 3 scheduled, 4 retry, 5 dead, 6 signal, 7 consumers,
--       8..18 stream for priority 0..10
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 task id, 5 error, 6 retry_in_ms ('' = no retry)
-- Returns the new state letter ('r' or 'd'), or '' when the task is not active (no change).
--#include lib/record.lua
local now, group, id, retry_in = clock(ARGV[1]), ARGV[2], ARGV[4], ARGV[6]
redis.call('HSET', KEYS[7], ARGV[3], now)
local h = parse(redis.call('HGET', KEYS[1], id))
if not h or h.state ~= 'a' then return '' end
unlink(KEYS[8 + h.priority], group, h.sid)
redis.call('ZREM', KEYS[2], id)
h.sid, h.consumer, h.error = '', '', ARGV[5]
if retry_in ~= '' and h.retried < h.max_retry then
  local retry_at = add_ms(now, retry_in)
  h.state, h.retried, h.due = 'r', h.retried + 1, retry_at
  signal_if_earliest(KEYS[3], KEYS[4], KEYS[6], retry_at)
  redis.call('ZADD', KEYS[4], retry_at, id)
else
  h.state, h.ended = 'd', now
  redis.call('ZADD', KEYS[5], now, id)
end
redis.call('HSET', KEYS[1], id, build(h))
return h.state
