-- ack: active -> completed, writing the processed marker (the `completed` entry) and releasing
-- the unique key in the same step. Completes the task whoever holds it.
-- KEYS: 1 tasks, 2 leases, 3 completed, 4 unique, 5 unique_exp, 6 consumers,
--       7..17 stream for priority 0..10
-- ARGV: 1 now, 2 group, 3 consumer, 4.. task ids
-- Returns one 1 (completed by this call) or 0 (not active: nothing changed) per id.
--#include lib/record.lua
local now, group = ARGV[1], ARGV[2]
redis.call('HSET', KEYS[6], ARGV[3], now)
-- writes are gathered and sent as one multi-member command per key (far fewer redis.call)
local out, done, sids = {}, {}, {}
local records, ids, markers = {}, {}, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local h = not done[id] and parse(redis.call('HGET', KEYS[1], id))
  if h and h.state == 'a' then
    done[id] = true
    if h.sid ~= '' then
      local list = sids[h.priority] or {}
      list[#list + 1] = h.sid
      sids[h.priority] = list
    end
    release_unique(KEYS[4], KEYS[5], h.unique, id)
    h.state, h.ended, h.sid, h.consumer = 'c', now, '', ''
    append(records, id, build(h))
    ids[#ids + 1] = id
    append(markers, now, id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for prio, list in pairs(sids) do
  local stream = KEYS[7 + prio]
  if redis.call('EXISTS', stream) == 1 then
    call_chunked('XACK', stream, list, group)
    call_chunked('XDEL', stream, list)
  end
end
call_chunked('ZREM', KEYS[2], ids)
call_chunked('HSET', KEYS[1], records)
call_chunked('ZADD', KEYS[3], markers)
return out
