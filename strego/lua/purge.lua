-- purge: delete the tasks of a queue in the given states (never active ones: the caller refuses
-- that), releasing the unique keys they hold, looking at no more than `limit` entries per call
-- (the backend calls it again from the returned cursor until it returns ''). Streams and their
-- consumer groups stay (only the purged entries are XDELed), as do the pause flag and consumers.
-- Order: the zsets of scheduled, retry, dead, completed, cancelled (each read from its head,
-- which the deletes move on), then the streams p0..p10 from the cursor `<priority> <entry id>`
-- (the last entry looked at: entries of active tasks stay, so the next call starts after them).
-- Retained tasks whose retention ended are deleted but not counted (they were already gone).
-- KEYS: streams, tasks, scheduled, retry, dead, completed, cancelled, unique, unique_exp,
--       registered
-- ARGV: 1 now ('' = Redis TIME), 2 completed_ttl_ms, 3 dead_ttl_ms, 4 limit, 5 cursor ('' = start), 6 state
--       letters to purge (a subset of 'sprdcx'; '' only counts the tasks left, and clears the
--       queue's `registered` flag when none is left: the caller has just SREMed the queue from
--       the registry, lib/registered.lua)
-- Returns {deleted, the cursor to call again from, tasks left in the queue (retention ended: not
--          counted) once done, else -1}: the caller calls again until `left` is not -1.
-- A record that does not parse, met through its zset or stream entry, is deleted with it (it
-- could never run); an entry whose record is gone (a stray) is only removed.
--#include lib/record.lua
--#include lib/history.lua
local now, limit, cursor, states = clock(ARGV[1]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local n, budget = 0, limit
-- deletes are gathered and sent as one multi-member command per key (far fewer redis.call)
local gone = {}
-- h: the task's parsed record, false when its record does not parse
local function drop(id, h)
  if h then release_unique(K.unique, K.unique_exp, h.unique, id) end
  gone[#gone + 1] = id
  history(id, 'g', now)
  if not (h and expired(h, now, ARGV[2], ARGV[3])) then n = n + 1 end
end
local function done(next_cursor)
  call_chunked('HDEL', K.tasks, gone)
  if next_cursor then return {n, next_cursor, -1} end
  local left = redis.call('HLEN', K.tasks)
  for _, spec in ipairs({{K.dead, ARGV[3]}, {K.completed, ARGV[2]}, {K.cancelled, ARGV[2]}}) do
    left = left - redis.call('ZCOUNT', spec[1], '-inf', add_ms(now, -tonumber(spec[2])))
  end
  if states == '' and left == 0 then redis.call('DEL', K.registered) end
  return {n, '', left}
end
if cursor == '' then
  for _, spec in ipairs({{'s', K.scheduled}, {'r', K.retry}, {'d', K.dead}, {'c', K.completed},
                         {'x', K.cancelled}}) do
    local letter, set = spec[1], spec[2]
    if string.find(states, letter, 1, true) then
      local ids = redis.call('ZRANGE', set, 0, budget - 1)
      for _, id in ipairs(ids) do
        local rec = redis.call('HGET', K.tasks, id)
        local h = parse(rec)
        -- a record in another state is not this entry's task (the entry was a stray): it stays
        if rec and (not h or h.state == letter) then drop(id, h or false) end
      end
      call_chunked('ZREM', set, ids)
      budget = budget - #ids
      if budget == 0 then return done('') end  -- '' again: the zsets are not done yet
    end
  end
  cursor = '0 -'
end
if string.find(states, 'p', 1, true) then
  local prio, from = string.match(cursor, '^(%d+) (.+)$')
  for p = tonumber(prio), 10 do
    local stream = KEYS[1 + p]
    local entries = redis.call('XRANGE', stream, from, '+', 'COUNT', budget)
    local sids = {}
    for _, entry in ipairs(entries) do
      local sid, id = entry[1], entry[2][2]
      local rec = redis.call('HGET', K.tasks, id)
      local h = parse(rec)
      if not h or h.sid ~= sid or h.state ~= 'a' then
        -- a pending task's entry (or a stray one): active entries stay in the group
        sids[#sids + 1] = sid
        if rec and not h then
          drop(id, false)
        elseif h and h.state == 'p' and h.sid == sid then
          drop(id, h)
        end
      end
    end
    call_chunked('XDEL', stream, sids)
    budget = budget - #entries
    if budget == 0 then return done(p .. ' (' .. entries[#entries][1]) end
    from = '-'
  end
end
return done(nil)
