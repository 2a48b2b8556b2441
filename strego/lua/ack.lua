-- ack: active -> completed, writing the processed marker (the `completed` entry) and releasing
-- the unique key in the same step. Completes the task whoever holds it.
-- KEYS: streams, tasks, leases, completed, unique, unique_exp, consumers
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4.. task ids
-- Returns one 1 (completed by this call) or 0 (not active: nothing changed) per id.
--#include lib/record.lua

-- An active record's completed record (ended now, sid and consumer cleared, the rest kept), and
-- the sid, priority and unique key the ack needs; nil when `rec` is not an active record. The
-- hot path of every task: one match and one concatenation, not parse() and build() (3x dearer).
local ACTIVE = '^a(%d*),(%d*),(%d*),%d*,(%d*),(%d*),(%d*),([%d%-]*),(%d*),(%d*),(%d*);()'
local function completed(rec, now)
  if not rec then return nil end
  local r, d, st, due, mr, pr, sid, cl, el, ul, pos = string.match(rec, ACTIVE)
  if not r then return nil end
  local after_consumer = pos + (tonumber(cl) or 0)
  local unique, ulen = '', tonumber(ul) or 0
  if ulen > 0 then
    local from = after_consumer + (tonumber(el) or 0)
    unique = string.sub(rec, from, from + ulen - 1)
  end
  -- one `..` chain is one concatenation, with no table to build
  local new = 'c' .. r .. ',' .. d .. ',' .. st .. ',' .. now .. ',' .. due .. ',' .. mr .. ','
    .. pr .. ',,,' .. el .. ',' .. ul .. ';' .. string.sub(rec, after_consumer)
  return new, sid, tonumber(pr) or 0, unique
end

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
return out
