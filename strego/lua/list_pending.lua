-- list_pending (read only): a page of pending tasks in the order fetch takes them (priority 10
-- to 0, oldest entry first), from just after a cursor position (a priority and a stream entry
-- id: XRANGE seeks there, whatever the depth). Looks at `scan` stream entries at most: the
-- entries of active tasks (and strays) are passed over, so a page may hold fewer than `limit`.
-- KEYS: streams, tasks
-- ARGV: 1 limit, 2 scan, 3 cursor priority ('' = from the start), 4 cursor entry id
-- Returns {more, priority, entry id, {id, record, ...}}: more is 1 when the listing may go on
-- after (priority, entry id), the last entry looked at; 0 at the end of the last stream.
--#include lib/record.lua
--#include lib/stream_page.lua

local prio, from = 10, '-'
if ARGV[3] ~= '' then prio, from = tonumber(ARGV[3]), '(' .. ARGV[4] end

-- the next entries of a stream, their records read with one HMGET (far cheaper than a call each)
local function read(stream, after, count)
  local entries = redis.call('XRANGE', stream, after, '+', 'COUNT', count)
  local ids = {}
  for i, entry in ipairs(entries) do ids[i] = entry[2][2] end
  local recs = #ids > 0 and redis.call('HMGET', K.tasks, unpack(ids)) or {}
  local out = {}
  for i, entry in ipairs(entries) do out[i] = {entry[1], ids[i], recs[i]} end
  return out
end

local function keep(sid, rec)
  return pending_sid(rec) == sid
end

return stream_page(KEYS, read, keep, tonumber(ARGV[1]), tonumber(ARGV[2]), prio, from)
