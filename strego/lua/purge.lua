-- purge: delete the tasks of a queue in the given states (never active ones: the caller refuses
-- that), releasing the unique keys they hold. Streams and their consumer groups stay (only the
-- purged entries are XDELed), as do the pause flag and consumers.
-- KEYS: 1 tasks, 2 scheduled, 3 retry, 4 dead, 5 completed, 6 cancelled, 7 unique,
--       8 unique_exp, 9..19 stream for priority 0..10
-- ARGV: 1 state letters to purge (a subset of 'sprdcx')
-- Returns {deleted, tasks left in the queue}.
--#include lib/record.lua
local states = ARGV[1]
local n = 0
local function drop(id, h)
  if h then release_unique(KEYS[7], KEYS[8], h.unique, id) end
  redis.call('HDEL', KEYS[1], id)
  n = n + 1
end
for _, spec in ipairs({{'s', KEYS[2]}, {'r', KEYS[3]}, {'d', KEYS[4]}, {'c', KEYS[5]},
                       {'x', KEYS[6]}}) do
  if string.find(states, spec[1], 1, true) then
    for _, id in ipairs(redis.call('ZRANGE', spec[2], 0, -1)) do
      drop(id, parse(redis.call('HGET', KEYS[1], id)))
    end
    redis.call('DEL', spec[2])
  end
end
if string.find(states, 'p', 1, true) then
  for prio = 0, 10 do
    local stream = KEYS[9 + prio]
    if redis.call('EXISTS', stream) == 1 then
      for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+')) do
        local sid, id = entry[1], entry[2][2]
        local h = parse(redis.call('HGET', KEYS[1], id))
        if not h or h.sid ~= sid or h.state ~= 'a' then
          -- a pending task's entry (or a stray one): active entries stay in the group
          redis.call('XDEL', stream, sid)
          if h and h.state == 'p' and h.sid == sid then drop(id, h) end
        end
      end
    end
  end
end
return {n, redis.call('HLEN', KEYS[1])}
