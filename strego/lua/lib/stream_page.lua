-- lib/stream_page.lua: the walk list_pending and list_active share (included when scripts are
-- loaded): a page of tasks from the priority streams, priority 10 down to 0, oldest entry first,
-- from just after a cursor position (a priority and an entry id), looking at `budget` entries at
-- most. `read(stream, from, count)` gives the next entries of a stream after `from` (an id, or
-- '(' and an id: exclusive) as {sid, task id, record} triples (record false when gone);
-- `keep(sid, record)` says whether the entry's task is listed. `streams` is KEYS: the priority
-- streams are KEYS[1..11] of every script (the library takes keys as arguments).
-- Returns {more, priority, last entry id looked at, {id, record, ...}}: more is 1 when the
-- listing may go on after (priority, entry id); 0 at the end of the last stream.
local function stream_page(streams, read, keep, want, budget, prio, from)
  local out, more, last = {}, 0, ''
  while prio >= 0 do
    local stream, done = streams[1 + prio], true
    while redis.call('EXISTS', stream) == 1 do
      if want == 0 or budget == 0 then
        done = false
        break
      end
      local count = math.min(want, budget)
      local batch = read(stream, from, count)
      for _, entry in ipairs(batch) do
        local sid, id, rec = entry[1], entry[2], entry[3]
        budget, last = budget - 1, sid
        if rec and keep(sid, rec) then
          out[#out + 1] = id
          out[#out + 1] = rec
          want = want - 1
        end
      end
      if #batch < count then break end
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
      local stream = streams[1 + p]
      if redis.call('EXISTS', stream) == 1 and #read(stream, from, 1) > 0 then
        more = 1
        break
      end
      from = '-'
    end
  end
  return {more, prio, last, out}
end
