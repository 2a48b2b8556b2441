-- lib/history_ids.lua: one history entry (lib/history.lua) for a batch of tasks.
--#include lib/history.lua

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
