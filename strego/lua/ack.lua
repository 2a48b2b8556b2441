-- ack: active -> completed, writing the processed marker (the `completed` entry), the handler's
-- result (when given) and releasing the unique key in the same step, and counting the
-- completions in the per-minute history. Completes the task whoever holds it. A task whose
-- cancel was requested while it ran ends cancelled instead (no result).
-- KEYS: streams, tasks, leases, completed, unique, unique_exp, consumers, cancelled, minutes,
--       minutes_index
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 ended channel ('' = none),
--       5 history retention ms, 6 '1' (7.. task ids) or '2' (7.. pairs: task id, result
--       ('' = none))
-- Returns one 1 (completed by this call) or 0 (not active, or ended cancelled) per id.
--#include lib/record.lua
--#include lib/minutes.lua

local now, group = clock(ARGV[1]), ARGV[2]
redis.call('HSET', K.consumers, ARGV[3], now)
-- writes are gathered and sent as one multi-member command per key (far fewer redis.call)
local out, done, sids = {}, {}, {}
-- n tasks completed: records {id, record, ...}, ids, markers {now, id, ...}
local records, ids, markers, n = {}, {}, {}, 0
local by_type = {}  -- completions per task type
local ended = {}
local step = tonumber(ARGV[6])
for i = 7, #ARGV, step do
  local id, result = ARGV[i], ''
  if step == 2 then result = ARGV[i + 1] end
  local old, rec, sid, priority, unique, part, env_at
  if not done[id] then
    old = redis.call('HGET', K.tasks, id)
    rec, sid, priority, unique, part, env_at = completed(old, now)
  end
  if rec and (part ~= '' or result ~= '') then
    -- optional fields (a cancel request?) or a result to add: the full parse, off the hot path
    local h = parse(old)
    if h.opt.cancel then
      done[id] = true
      unlink(KEYS[1 + h.priority], group, h.sid)
      redis.call('ZREM', K.leases, id)
      end_cancelled(h, id, now, K.tasks, K.cancelled, K.unique, K.unique_exp)
      ended[#ended + 1] = id
      rec = nil
    else
      -- a failure kept from an earlier death (requeued since) is no longer this task's
      h.state, h.ended, h.sid, h.consumer, h.opt.failure = 'c', now, '', '', nil
      if result ~= '' then h.opt.result = result end
      rec = build(h)
    end
  end
  if rec then
    local task_type = envelope_type(old, env_at)
    if task_type then by_type[task_type] = (by_type[task_type] or 0) + 1 end
    done[id] = true
    if sid ~= '' then
      local list = sids[priority] or {}
      list[#list + 1] = sid
      sids[priority] = list
    end
    if unique ~= '' then release_unique(K.unique, K.unique_exp, unique, id) end
    records[2 * n + 1], records[2 * n + 2] = id, rec
    markers[2 * n + 1], markers[2 * n + 2] = now, id
    n = n + 1
    ids[n] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for prio, list in pairs(sids) do
  local stream = KEYS[1 + prio]
  if redis.call('EXISTS', stream) == 1 then
    call_chunked('XACK', stream, list, group)
    call_chunked('XDEL', stream, list)
  end
end
call_chunked('ZREM', K.leases, ids)
call_chunked('HSET', K.tasks, records)
call_chunked('ZADD', K.completed, markers)
count_outcomes(K.minutes, K.minutes_index, now, ARGV[5], 'c', n, by_type)
publish_ended(ARGV[4], ids)
publish_ended(ARGV[4], ended)
return out
