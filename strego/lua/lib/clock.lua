-- lib/clock.lua: the one clock every script judges time by (included when scripts are loaded).

-- The time a test injected, once clock() has seen it (push() stamps stream entries with it);
-- nil in production.
local injected_now = nil

-- The backend's clock (docs/architecture.md, invariant 7): Redis TIME in epoch ms, read inside
-- the script, so every lease, expiry and due time is judged by one clock whatever the callers'
-- host clocks say. `injected` is ARGV's `now`: '' in production; a test's fake clock otherwise.
local function clock(injected)
  if injected ~= '' then
    injected_now = injected
    return injected
  end
  local t = redis.call('TIME')
  return string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
