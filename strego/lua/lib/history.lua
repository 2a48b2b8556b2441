-- lib/history.lua: the task history (docs/redis.md, "History"), written by the transition's own
-- script so that no second write can be lost.
-- HISTORY is set by the script loader before the script: `false` when the backend has history
-- off (each call below is then one test), else {key = the queue's `history` stream, passed as
-- the script's last KEYS entry (same hash tag: same Cluster slot), cap = its MAXLEN}.
-- An entry is one transition of one or more tasks: s state letter (s p a r d c x, g = deleted),
-- t time ms (the script's clock), r retried, e error, c consumer, then one pair per task: its
-- id and its envelope (enqueue: type, labels, payload) or ''. A batch (a fetch, an ack, an
-- enqueue) is one XADD, not one per task: that keeps history cheap on the hot path. The entry id
-- (ms-seq, increasing per stream) orders a queue's events.
local HISTORY_PAIRS = 1000  -- values per XADD (Lua's unpack has a stack limit)

-- One entry for the tasks of `pairs` {id, envelope or '', ...}.
local function history_pairs(state, now, pairs, retried, err, consumer)
  if not HISTORY or #pairs == 0 then return end
  for first = 1, #pairs, HISTORY_PAIRS do
    redis.call('XADD', HISTORY.key, 'MAXLEN', '~', HISTORY.cap, '*', 's', state, 't', now,
      'r', retried or '', 'e', err or '', 'c', consumer or '',
      unpack(pairs, first, math.min(#pairs, first + HISTORY_PAIRS - 1)))
  end
end

-- One entry for one task.
local function history(id, state, now, retried, err, consumer)
  if HISTORY then history_pairs(state, now, {id, ''}, retried, err, consumer) end
end

-- One entry for the ids found every `stride` items of `list` (a fetch's {id, record, ...}).
local function history_ids(state, now, list, stride, consumer)
  if not HISTORY then return end
  local pairs = {}
  for i = 1, #list, stride do
    pairs[#pairs + 1] = list[i]
    pairs[#pairs + 1] = ''
  end
  history_pairs(state, now, pairs, '', '', consumer)
end

-- Add a task to `pairs` (gathered for history_pairs).
local function history_add(pairs, id, env)
  if HISTORY then
    pairs[#pairs + 1] = id
    pairs[#pairs + 1] = env
  end
end
