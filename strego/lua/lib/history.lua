-- lib/history.lua: the task history (docs/redis.md, "History"), written by the transition's own
-- script so that no second write can be lost.
-- HISTORY is set by the script loader before the script: `false` when the backend has history
-- off (each call below is then one test), else {key = the queue's `history` stream, passed as
-- the script's last KEYS entry (same hash tag: same Cluster slot), cap = its MAXLEN}.
-- An entry is one transition of one or more tasks: s state letter (s p a r d c x, g = deleted),
-- t time ms (the script's clock), r retried, e error, c consumer, then one pair per task: its
-- id and its envelope (enqueue: type, labels, payload) or ''. A batch (a fetch, an ack, an
-- enqueue) is one XADD, not one per task: that keeps history cheap on the hot path. The entry id
-- (ms-seq, increasing per stream) orders a queue's events. The code is kept short: it is in the
-- biggest script, enqueue, which must stay under 16 KB. lib/history_ids.lua has the batch helper.

-- A history key of another type must not break the transition, which has written already:
-- the event is lost (pcall), never the task's state, as lib/minutes.lua does for its counts.
-- One entry for the tasks of `pairs` {id, envelope or '', ...}, 500 tasks per XADD at most
-- (Lua's unpack has a stack limit).
local function history_pairs(state, now, pairs, retried, err, consumer)
  if not HISTORY then return end
  for i = 1, #pairs, 1000 do
    redis.pcall('XADD', HISTORY.key, 'MAXLEN', '~', HISTORY.cap, '*', 's', state, 't', now, 'r',
      retried or '', 'e', err or '', 'c', consumer or '', unpack(pairs, i, math.min(#pairs, i + 999)))
  end
end

-- One entry for one task.
local function history(id, state, now, retried, err, consumer)
  if HISTORY then history_pairs(state, now, {id, ''}, retried, err, consumer) end
end
