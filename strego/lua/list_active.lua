-- list_active (read only): a page of active tasks in the order of their stream entries (priority
-- 10 to 0, oldest entry first: the order fetch took them; a claim keeps the entry), read from
-- the groups' pending lists (XPENDING seeks to the cursor, whatever the depth), from just after
-- a cursor position (a priority and an entry id). Looks at `scan` delivered entries at most
-- (stray ones are passed over), so a page may hold fewer than `limit`.
-- KEYS: streams, tasks
-- ARGV: 1 group, 2 limit, 3 scan, 4 cursor priority ('' = from the start), 5 cursor entry id
-- Returns {more, priority, entry id, {id, record, ...}} as list_pending does.
--#include lib/record.lua
--#include lib/stream_page.lua
local group = ARGV[1]
local prio, from = 10, '-'
if ARGV[4] ~= '' then prio, from = tonumber(ARGV[4]), '(' .. ARGV[5] end

-- the delivered entries of a stream after `from` ({} when it has no group), with their tasks
local function read(stream, after, count)
  local delivered = redis.pcall('XPENDING', stream, group, after, '+', count)
  if delivered.err then return {} end
  local out = {}
  for i, p in ipairs(delivered) do
    local sid = p[1]
    local entry = redis.call('XRANGE', stream, sid, sid)[1]
    local id = entry and entry[2][2]
    out[i] = {sid, id, id and redis.call('HGET', K.tasks, id)}
  end
  return out
end

local function keep(sid, rec)
  local h = parse(rec)
  return h and h.state == 'a' and h.sid == sid
end

return stream_page(KEYS, read, keep, tonumber(ARGV[2]), tonumber(ARGV[3]), prio, from)
