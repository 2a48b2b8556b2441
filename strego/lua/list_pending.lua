-- list_pending (read only): pending tasks in the order fetch takes them (priority 10 to 0,
-- oldest first), skipping `offset` and returning at most `limit`.
-- KEYS: 1 tasks, 2..12 stream for priority 0..10
-- ARGV: 1 offset, 2 limit
-- Returns {id, record, ...}.
--#include lib/record.lua
local skip, want = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for prio = 10, 0, -1 do
  local stream = KEYS[2 + prio]
  if want > 0 and redis.call('EXISTS', stream) == 1 then
    local from = '-'
    while want > 0 do
      local entries = redis.call('XRANGE', stream, from, '+', 'COUNT', 100)
      if #entries == 0 then break end
      for _, entry in ipairs(entries) do
        local sid, id = entry[1], entry[2][2]
        local rec = redis.call('HGET', KEYS[1], id)
        local h = parse(rec)
        if h and h.state == 'p' and h.sid == sid and want > 0 then
          if skip > 0 then
            skip = skip - 1
          else
            out[#out + 1] = id
            out[#out + 1] = rec
            want = want - 1
          end
        end
      end
      if #entries < 100 then break end
      from = '(' .. entries[#entries][1]
    end
  end
end
return out
