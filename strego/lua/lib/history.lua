-- lib/history.lua: the task history (docs/redis.md, "History"), one event per transition,
-- appended in the transition's own script so that no second write can be lost.
-- HISTORY is set by the script loader before the script: `false` when the backend has history
-- off (each call below is then one test), else {key = the queue's `history` stream, passed as
-- the script's last KEYS entry (same hash tag: same Cluster slot), cap = its MAXLEN}.
-- An event: i task id, s state letter (s p a r d c x, g = deleted), t time ms (the script's
-- clock), r retried, e error, c consumer, v envelope (enqueue only: type, labels, payload).
-- The entry id (ms-seq, increasing per stream) orders a queue's events.
local function history(id, state, now, retried, err, consumer, env)
  if not HISTORY then return end
  redis.call('XADD', HISTORY.key, 'MAXLEN', '~', HISTORY.cap, '*', 'i', id, 's', state,
    't', now, 'r', retried or '', 'e', err or '', 'c', consumer or '', 'v', env or '')
end
