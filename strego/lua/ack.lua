-- ack: active -> completed, writing the processed marker (the `completed` entry) and releasing
-- the unique key in the same step. Completes the task whoever holds it.
-- KEYS: 1 tasks, 2 leases, 3 completed, 4 unique, 5 unique_exp, 6 consumers,
--       7..17 stream for priority 0..10
-- ARGV: 1 now, 2 group, 3 consumer, 4.. task ids
-- Returns one 1 (completed by this call) or 0 (not active: nothing changed) per id.
--#include lib/record.lua
local now, group = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[6], ARGV[3], now)
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local h = parse(redis.call('HGET', KEYS[1], id))
  if h and h.state == 'a' then
    unlink(KEYS[7 + h.priority], group, h.sid)
    redis.call('ZREM', KEYS[2], id)
    release_unique(KEYS[4], KEYS[5], h.unique, id)
    h.state, h.ended, h.sid, h.consumer = 'c', now, '', ''
    redis.call('HSET', KEYS[1], id, build(h))
    redis.call('ZADD', KEYS[3], now, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
