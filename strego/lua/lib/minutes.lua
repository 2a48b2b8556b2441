-- lib/minutes.lua: the per-minute history `throughput` reads (included by ack, fail and
-- claim_stale, which count in the same step as the transition). Counts live in the queue's
-- `minutes` hash, one field per minute, outcome and task type:
--   <minute><kind>          every type      minute: floor(now / 60000) by the script's clock;
--   <minute><kind>:<type>   one task type   kind: c completed, f failed to retry, d dead
-- The `minutes_index` zset scores each field by its minute, so the fields of minutes past the
-- retention window are found and removed, at most PRUNE_BATCH a time, whenever a count creates a
-- field (once per field and minute): the hot path pays one HINCRBY per field it counts.
-- A key of another type must not break a transition: history writes go through pcall, and a
-- count that cannot be written is lost, never the task's state.

local PRUNE_BATCH = 100
local unpack = unpack or table.unpack

local function failed(reply)
  return type(reply) == 'table' and reply.err ~= nil
end

-- Add `n` to `field`; index it (and prune the minutes that left the window) when it is new.
local function add_count(hist, index, field, n, minute, first_kept)
  local total = redis.pcall('HINCRBY', hist, field, n)
  if failed(total) or tonumber(total) ~= n then return end
  if failed(redis.pcall('ZADD', index, minute, field)) then return end
  local old = redis.pcall('ZRANGEBYSCORE', index, '-inf', '(' .. first_kept, 'LIMIT', 0,
    PRUNE_BATCH)
  if failed(old) or #old == 0 then return end
  redis.pcall('HDEL', hist, unpack(old))
  redis.pcall('ZREM', index, unpack(old))
end

-- Count `total` outcomes of `kind` ('c', 'f' or 'd') at `now`, `by_type` {type = n} of them by
-- task type; `retention` (ms) is how long a minute is kept (its start after now - retention).
local function count_outcomes(hist, index, now, retention, kind, total, by_type)
  if total == 0 then return end
  local minute = math.floor(tonumber(now) / 60000)
  local first_kept = math.floor((tonumber(now) - tonumber(retention)) / 60000) + 1
  local prefix = string.format('%d', minute) .. kind
  add_count(hist, index, prefix, total, minute, first_kept)
  for task_type, n in pairs(by_type) do
    add_count(hist, index, prefix .. ':' .. task_type, n, minute, first_kept)
  end
end
