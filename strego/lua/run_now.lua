-- run_now: scheduled or retry -> pending at once (XADD), by id, as if its due time had come: it
-- keeps its retried count and the rest of its record. A task in another state, or unknown, is
-- left alone.
-- KEYS: streams, tasks, scheduled, retry, ready
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 task id
-- Returns 1 if it made the task pending, 0 (no change) otherwise.
--#include lib/record.lua
--#include lib/ready.lua
--#include lib/history.lua
local now, group, id = clock(ARGV[1]), ARGV[2], ARGV[3]  -- clock: push stamps the entry with it
local refused = ready_refused(K.ready)  -- before any write
if refused then return refused end
local h = parse(redis.call('HGET', K.tasks, id))
if not h then return 0 end
if h.state == 's' then
  redis.call('ZREM', K.scheduled, id)
elseif h.state == 'r' then
  redis.call('ZREM', K.retry, id)
else
  return 0
end
h.state, h.due = 'p', ''
h.sid = push(KEYS[1 + h.priority], group, id)
redis.call('HSET', K.tasks, id, build(h))
ready_moved()
history(id, 'p', now, h.retried)
return 1
