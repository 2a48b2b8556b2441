-- list_pending (read only): a page of pending tasks in the order fetch takes them (priority 10
-- to 0, oldest entry first), from just after a cursor position (a priority and a stream entry
-- id: XRANGE seeks there, whatever the depth). Looks at `scan` stream entries at most: the
-- entries of active tasks (and strays) are passed over, so a page may hold fewer than `limit`.
-- KEYS: streams, tasks
-- ARGV: 1 limit, 2 scan, 3 cursor priority ('' = from the start), 4 cursor entry id
-- Returns {more, priority, entry id, {id, record, ...}}: more is 1 when the listing may go on
-- after (priority, entry id), the last entry looked at; 0 at the end of the last stream.
--#include lib/record.lua

-- The stream entry id of a pending record (nil for any other): a pattern match, no parse(), as
-- a page looks at up to a thousand records.
local PENDING_SID = '^p%d*,%d*,%d*,%d*,%d*,%d*,%d*,([%d%-]*),'
local function pending_sid(rec)
  local ms, seq = string.match(rec, SHORT)
  if ms then return short_sid(ms, seq) end
  return string.match(rec, PENDING_SID)
end
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local prio, from = 10, '-'
if ARGV[3] ~= '' then prio, from = tonumber(ARGV[3]), '(' .. ARGV[4] end
local out, more, last = {}, 0, ''
while prio >= 0 do
  local stream, done = KEYS[1 + prio], true
  while redis.call('EXISTS', stream) == 1 do
    if want == 0 or budget == 0 then
      done = false
      break
    end
    local count = math.min(want, budget)
    local entries = redis.call('XRANGE', stream, from, '+', 'COUNT', count)
    local ids = {}
    for i, entry in ipairs(entries) do ids[i] = entry[2][2] end
    -- one HMGET for the batch: far cheaper than a call per entry
    local recs = #ids > 0 and redis.call('HMGET', K.tasks, unpack(ids)) or {}
    for i, entry in ipairs(entries) do
      local sid, rec = entry[1], recs[i]
      budget, last = budget - 1, sid
      if rec and pending_sid(rec) == sid then
        out[#out + 1] = ids[i]
        out[#out + 1] = rec
        want = want - 1
      end
    end
    if #entries < count then break end
    from = '(' .. last
  end
  if not done then
    more, from = 1, '(' .. last
    break
  end
  prio, from = prio - 1, '-'
end
-- a full page: is any entry left after it? (else the caller would ask for an empty last page)
if more == 1 and want == 0 then
  more = 0
  for p = prio, 0, -1 do
    local stream = KEYS[1 + p]
    if redis.call('EXISTS', stream) == 1 and #redis.call('XRANGE', stream, from, '+', 'COUNT', 1) > 0 then
      more = 1
      break
    end
    from = '-'
  end
end
return {more, prio, last, out}
