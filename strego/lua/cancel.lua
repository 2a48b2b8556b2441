-- cancel: scheduled, pending or retry -> cancelled (never retried or dead-lettered), releasing
-- the unique key; an active task gets its cancel requested instead (the `cancel` field, read by
-- renew, ack and fail) and its holder is told on the cancel channel.
-- KEYS: streams, tasks, scheduled, retry, cancelled, unique, unique_exp
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 task id, 4 ended channel, 5 cancel channel ('' = none)
-- Returns 1 if cancelled, 2 if its cancel is requested (active), 0 (no change) for a task in
-- another state or unknown.
--#include lib/record.lua
local now, group, id = clock(ARGV[1]), ARGV[2], ARGV[3]
local h = parse(redis.call('HGET', K.tasks, id))
if not h then return 0 end
if h.state == 's' then
  redis.call('ZREM', K.scheduled, id)
elseif h.state == 'r' then
  redis.call('ZREM', K.retry, id)
elseif h.state == 'p' then
  unlink(KEYS[1 + h.priority], group, h.sid)
elseif h.state == 'a' then
  if not h.opt.cancel then
    h.opt.cancel = '1'
    redis.call('HSET', K.tasks, id, build(h))
  end
  if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], id) end
  return 2
else
  return 0
end
release_unique(K.unique, K.unique_exp, h.unique, id)
h.state, h.ended, h.due, h.sid = 'x', now, '', ''
h.opt.cancel = nil  -- a request left by a release
redis.call('HSET', K.tasks, id, build(h))
redis.call('ZADD', K.cancelled, now, id)
publish_ended(ARGV[4], {id})
return 1
