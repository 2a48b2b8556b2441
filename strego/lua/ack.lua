-- ack: active -> completed, writing the processed marker (the `completed` entry) and releasing
-- the unique key in the same step. Completes the task whoever holds it.
-- KEYS: streams, tasks, leases, completed, unique, unique_exp, consumers
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4.. task ids
-- Returns one 1 (completed by this call) or 0 (not active: nothing changed) per id.
--#include lib/record.lua
--#include lib/history_ids.lua

local now, group = clock(ARGV[1]), ARGV[2]
redis.call('HSET', K.consumers, ARGV[3], now)
-- writes are gathered and sent as one multi-member command per key (far fewer redis.call)
local out, done, sids = {}, {}, {}
-- n tasks completed: records {id, record, ...}, ids, markers {now, id, ...}
local records, ids, markers, n = {}, {}, {}, 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local rec, sid, priority, unique
  if not done[id] then
    rec, sid, priority, unique = completed(redis.call('HGET', K.tasks, id), now)
  end
  if rec then
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
    out[i - 3] = 1
  else
    out[i - 3] = 0
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
history_ids('c', now, ids, 1)
return out
