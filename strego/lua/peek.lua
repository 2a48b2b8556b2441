-- peek: read-mostly check of one queue before a fetch over several queues (of the queues not
-- known idle, and of all of them now and then), so they are asked in one pipelined round trip
-- instead of one fetch each. Registers the consumer as fetch does.
-- KEYS: streams, consumers, paused, ready
-- ARGV: 1 now ('' = Redis TIME), 2 consumer
-- Returns {flag, ready}: flag 1 (some stream has entries: fetch may start tasks), 0 (every
-- stream is empty: a blocking wait may start from '0-0') or -1 (paused); ready is the queue's
-- ready counter ('' = none), read in the same step, so a caller that found nothing to do knows
-- that nothing became pending while the counter holds that value.
--#include lib/clock.lua
local ready = redis.call('GET', K.ready) or ''
redis.call('HSET', K.consumers, ARGV[2], clock(ARGV[1]))
if redis.call('EXISTS', K.paused) == 1 then return {-1, ready} end
for i = 1, 11 do
  if redis.call('XLEN', KEYS[i]) > 0 then return {1, ready} end
end
return {0, ready}
