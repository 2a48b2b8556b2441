-- remove_idle_drainers: forget the history drainers (consumers of the history stream's group)
-- that hold no entry and were idle longer than idle_ms: each drainer start reads under a name of
-- its own, so without this every restart would leave one consumer in the group for good. One
-- script, so that no drainer reads entries between the look and the removal (DELCONSUMER would
-- drop them from the pending list, and they would never be read again).
-- KEYS: history
-- ARGV: 1 group, 2 idle_ms, 3 the caller's own consumer name (kept)
-- Returns how many consumers were removed.
local group, idle, own = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local consumers = redis.pcall('XINFO', 'CONSUMERS', K.history, group)
if consumers.err then return 0 end -- no stream or no group yet: nothing to forget
local removed = 0
for _, fields in ipairs(consumers) do
  local info = {}
  for i = 1, #fields, 2 do info[fields[i]] = fields[i + 1] end
  if info.name ~= own and tonumber(info.pending) == 0 and tonumber(info.idle) > idle then
    redis.call('XGROUP', 'DELCONSUMER', K.history, group, info.name)
    removed = removed + 1
  end
end
return removed
