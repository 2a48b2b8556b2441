-- requeue_dead: dead -> pending with retried = 0, by id (a task that is not dead, or whose
-- retention ended, is left alone, so two concurrent requeues move it once). With no ids given,
-- takes the `limit` oldest entries of the dead set that died at or before `until`: each dead
-- task is requeued, and each whose retention ended (or a stray entry) is removed, so that the
-- next call looks at newer ones (requeue_all_dead calls it until it looks at fewer than `limit`,
-- passing the first call's now as `until`: a task that dies again meanwhile is not walked again).
-- KEYS: streams, tasks, dead, ready
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 dead_ttl_ms, 4 limit, 5 until ('' = now), 6.. task ids
-- Returns {how many were requeued, how many entries it looked at, until}.
--#include lib/record.lua
--#include lib/ready.lua
--#include lib/history.lua
local now, group = clock(ARGV[1]), ARGV[2]
local refused = ready_refused(K.ready)  -- before any write
if refused then return refused end
local ids, until_ms = {}, ARGV[5] == '' and now or ARGV[5]
if #ARGV > 5 then
  for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGEBYSCORE', K.dead, '-inf', until_ms, 'LIMIT', 0, tonumber(ARGV[4]))
end
local n = 0
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', K.tasks, id)
  local h = parse(rec)
  if h and h.state == 'd' and not expired(h, now, 0, ARGV[3]) then
    redis.call('ZREM', K.dead, id)
    h.state, h.retried, h.ended = 'p', 0, ''
    h.sid = push(KEYS[1 + h.priority], group, id)
    redis.call('HSET', K.tasks, id, build(h))
    n = n + 1
    history(id, 'p', now, 0)
  elseif #ARGV == 5 and rec and not h then
    -- a dead entry whose record does not parse: dead again under a fresh header with the reason
    -- (scored now, after `until`: not walked again), never dropped
    bury_unreadable(K.tasks, K.dead, id, rec, now)
  elseif #ARGV == 5 then
    -- the whole set is being requeued: an entry left in place would stop the walk here
    redis.call('ZREM', K.dead, id)
    if h and h.state == 'd' then redis.call('HDEL', K.tasks, id) end  -- retention ended
  end
end
if n > 0 then ready_moved() end
return {n, #ids, until_ms}
