-- renew: extend the leases of active tasks held by `consumer` to now + lease_ms.
-- KEYS: tasks, leases, consumers
-- ARGV: 1 now ('' = Redis TIME), 2 consumer, 3 lease_ms, 4.. task ids
-- Returns {the ids the consumer no longer holds, the held ids whose cancel was requested}.
--#include lib/record.lua
local consumer = ARGV[2]
local now = clock(ARGV[1])
redis.call('HSET', K.consumers, consumer, now)
local lease_until = add_ms(now, ARGV[3])
local lost, cancel = {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local h = parse(redis.call('HGET', K.tasks, id))
  if h and h.state == 'a' and h.consumer == consumer then
    redis.call('ZADD', K.leases, lease_until, id)
    if h.opt.cancel then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, cancel}
