-- fire_schedule: a schedule's due tick -> its task pending (XADD to its priority stream), and the
-- schedule on to its next tick, only if the schedule still holds the tick the caller saw: any
-- number of servers may try a tick, one fires it (no leader, no lock).
-- KEYS: streams, tasks, crons, ready, registered
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 schedule id, 4 revision seen, 5 next tick seen (ms),
--       6 tick to fire (ms), 7 next tick after it (ms), 8 the tick's task id ('' = skip the
--       tick: enqueue nothing), 9 priority, 10 max_retry, 11 envelope
-- Returns 'FIRED' | 'FIRED_REGISTER' (fired, and the task it stored found the queue's
-- `registered` flag unset: the caller SADDs the queue to the registry) | 'STALE' (the revision
-- or next tick moved on, or the schedule is gone; nothing written) | 'EARLY' (the tick is after
-- now by this script's clock; nothing written)
--#include lib/record.lua
--#include lib/ready.lua
--#include lib/history.lua
--#include lib/registered.lua
local now, group, id, task_id = clock(ARGV[1]), ARGV[2], ARGV[3], ARGV[8]
local fired = 'FIRED'
local state = redis.call('HGET', K.crons, id)
if not state then return 'STALE' end
local rev, seen, last = string.match(state, '^(%d+),(%-?%d+),(.*)$')
if rev ~= ARGV[4] or seen ~= ARGV[5] then return 'STALE' end
if tonumber(ARGV[6]) > tonumber(now) then return 'EARLY' end
if task_id ~= '' then
  local refused = ready_refused(K.ready)  -- before any write
  if refused then return refused end
  -- an id taken already: this tick fired before the schedule was put again; not twice
  if redis.call('HEXISTS', K.tasks, task_id) == 0 then
    local h = {state = 'p', retried = 0, deliveries = 0, started = '', ended = '', due = '',
               max_retry = tonumber(ARGV[10]), priority = tonumber(ARGV[9]), sid = '',
               consumer = '', error = '', unique = '', env = ARGV[11]}
    h.sid = push(KEYS[1 + h.priority], group, task_id)
    redis.call('HSET', K.tasks, task_id, build(h))
    ready_moved()
    history_pairs('p', now, {task_id, ARGV[11]}, 0)
    if newly_registered(K.registered) then fired = 'FIRED_REGISTER' end
  end
  last = ARGV[6] .. ',' .. task_id
end
redis.call('HSET', K.crons, id, rev .. ',' .. ARGV[7] .. ',' .. last)
return fired
