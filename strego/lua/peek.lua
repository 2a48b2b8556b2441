-- peek: read-mostly check of one queue before a fetch over several queues, so a server with many
-- idle queues asks them all in one pipelined round trip instead of one fetch each. Registers the
-- consumer as fetch does.
-- KEYS: 1 consumers, 2 paused, 3..13 stream for priority 0..10
-- ARGV: 1 now, 2 consumer
-- Returns 1 (some stream has entries: fetch may start tasks), 0 (every stream is empty: a
-- blocking wait may start from '0-0') or -1 (paused).
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1])
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
for i = 3, 13 do
  if redis.call('XLEN', KEYS[i]) > 0 then return 1 end
end
return 0
