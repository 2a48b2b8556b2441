-- list_active (read only): a page of active tasks in the order of their stream entries (priority
-- 10 to 0, oldest entry first: the order fetch took them; a claim keeps the entry), read from
-- the groups' pending lists (XPENDING seeks to the cursor, whatever the depth), from just after
-- a cursor position (a priority and an entry id). Looks at `scan` delivered entries at most
-- (stray ones are passed over), so a page may hold fewer than `limit`.
-- KEYS: streams, tasks
-- ARGV: 1 group, 2 limit, 3 scan, 4 cursor priority ('' = from the start), 5 cursor entry id
-- Returns {more, priority, entry id, {id, record, ...}} as list_pending does.
--#include lib/record.lua
local group, want, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local prio, from = 10, '-'
if ARGV[4] ~= '' then prio, from = tonumber(ARGV[4]), '(' .. ARGV[5] end
local out, more, last = {}, 0, ''

-- the delivered entries of a stream after `from` ({} when it has no group)
local function read(stream, start, count)
  local delivered = redis.pcall('XPENDING', stream, group, start, '+', count)
  if delivered.err then return {} end
  return delivered
end

while prio >= 0 do
  local stream, done = KEYS[1 + prio], true
  while redis.call('EXISTS', stream) == 1 do
    if want == 0 or budget == 0 then
      done = false
      break
    end
    local count = math.min(want, budget)
    local delivered = read(stream, from, count)
    for _, p in ipairs(delivered) do
      local sid = p[1]
      budget, last = budget - 1, sid
      local entry = redis.call('XRANGE', stream, sid, sid)[1]
      local id = entry and entry[2][2]
      local rec = id and redis.call('HGET', K.tasks, id)
      local h = parse(rec)
      if h and h.state == 'a' and h.sid == sid then
        out[#out + 1] = id
        out[#out + 1] = rec
        want = want - 1
      end
    end
    if #delivered < count then break end
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
    if redis.call('EXISTS', stream) == 1 and #read(stream, from, 1) > 0 then
      more = 1
      break
    end
    from = '-'
  end
end
return {more, prio, last, out}
