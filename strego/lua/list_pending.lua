-- list_pending (read only): a page of pending tasks in the order fetch takes them (priority 10
-- to 0, oldest entry first), from just after a cursor position (a priority and a stream entry
-- id: XRANGE seeks there, whatever the depth). Looks at `scan` stream entries at most: the
-- entries of active tasks (and strays) are passed over, so a page may hold fewer than `limit`.
-- KEYS: 1 tasks, 2..12 stream for priority 0..10
-- ARGV: 1 limit, 2 scan, 3 cursor priority ('' = from the start), 4 cursor entry id
-- Returns {more, priority, entry id, {id, record, ...}}: more is 1 when the listing may go on
-- after (priority, entry id), the last entry looked at; 0 at the end of the last stream.
--#include lib/record.lua
local want, budget = tonumber(ARGV[1]), tonumber(ARGV[2])
local prio, from = 10, '-'
if ARGV[3] ~= '' then prio, from = tonumber(ARGV[3]), '(' .. ARGV[4] end
local out, more, last = {}, 0, ''
while prio >= 0 do
  local stream, done = KEYS[2 + prio], true
  while redis.call('EXISTS', stream) == 1 do
    if want == 0 or budget == 0 then
      done = false
      break
    end
    local count = math.min(want, budget)
    local entries = redis.call('XRANGE', stream, from, '+', 'COUNT', count)
    for _, entry in ipairs(entries) do
      local sid, id = entry[1], entry[2][2]
      budget, last = budget - 1, sid
      local rec = redis.call('HGET', KEYS[1], id)
      local h = parse(rec)
      if h and h.state == 'p' and h.sid == sid then
        out[#out + 1] = id
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
    local stream = KEYS[2 + p]
    if redis.call('EXISTS', stream) == 1 and #redis.call('XRANGE', stream, from, '+', 'COUNT', 1) > 0 then
      more = 1
      break
    end
    from = '-'
  end
end
return {more, prio, last, out}
