-- claim_stale: active tasks whose lease expired (lease <= now) -> active, held by `consumer`
-- (XCLAIM of their stream entry), deliveries + 1, new lease; or -> dead when their deliveries
-- reached max_deliveries; or -> cancelled when their cancel was requested (never run again, never
-- dead). The `leases` zset is scored by expiry, so every stale task is found
-- however many fresh ones there are. Bounded work: besides the `count` tasks it claims, a call
-- settles at most 1,000 stale entries otherwise (to dead, or dropped), and walks at most 1,000
-- pending-list entries looking for the entries of unreadable records; the next call goes on.
-- Tasks sent to dead are counted in the per-minute history.
-- KEYS: streams, tasks, leases, dead, consumers, cancelled, unique, unique_exp, minutes,
--       minutes_index
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 count, 5 lease_ms, 6 max_deliveries,
--       7 the error recorded for a task that exceeded max_deliveries, 8 ended channel ('' = none),
--       9 history retention ms
-- Returns {id, record, ...} of the claimed tasks.
--#include lib/record.lua
--#include lib/minutes.lua
local now, group, consumer = clock(ARGV[1]), ARGV[2], ARGV[3]
local need, max_deliveries = tonumber(ARGV[4]), tonumber(ARGV[6])
redis.call('HSET', K.consumers, consumer, now)
local lease_until = add_ms(now, ARGV[5])
local out, seen, ended = {}, {}, {}
local died, died_by_type = 0, {}  -- sent to dead, for the history
-- what is left of the bounds: stale entries settled otherwise than claimed, pending-list entries
local settle, pel = 1000, 1000
while need > 0 and settle > 0 do
  local stale = redis.call('ZRANGEBYSCORE', K.leases, '-inf', now, 'LIMIT', 0, need)
  local fresh = false
  for _, id in ipairs(stale) do
    -- seen: only with lease_ms 0, where a claimed lease is stale at once
    if seen[id] or settle == 0 then break end
    seen[id], fresh = true, true
    local rec = redis.call('HGET', K.tasks, id)
    local h = parse(rec)
    local stream = h and KEYS[1 + h.priority]
    if not h or h.state ~= 'a' then
      redis.call('ZREM', K.leases, id)
      settle = settle - 1
      if rec and not h then
        bury_unreadable(K.tasks, K.dead, id, rec, now)
        for prio = 0, 10 do pel = unlink_delivered(KEYS[1 + prio], group, id, pel) end
      end
    elseif h.opt.cancel then
      settle = settle - 1
      unlink(stream, group, h.sid)
      redis.call('ZREM', K.leases, id)
      end_cancelled(h, id, now, K.tasks, K.cancelled, K.unique, K.unique_exp)
      ended[#ended + 1] = id
    elseif h.deliveries >= max_deliveries then
      settle = settle - 1
      unlink(stream, group, h.sid)
      redis.call('ZREM', K.leases, id)
      h.state, h.ended, h.sid, h.consumer, h.error = 'd', now, '', '', ARGV[7]
      redis.call('ZADD', K.dead, now, id)
      redis.call('HSET', K.tasks, id, build(h))
      ended[#ended + 1] = id
      died = died + 1
      local task_type = envelope_type(h.env, 1)
      if task_type then died_by_type[task_type] = (died_by_type[task_type] or 0) + 1 end
    else
      if h.sid ~= '' and redis.call('EXISTS', stream) == 1 then
        redis.call('XCLAIM', stream, group, consumer, 0, h.sid, 'JUSTID')
      end
      h.deliveries, h.started, h.consumer = h.deliveries + 1, now, consumer
      redis.call('ZADD', K.leases, lease_until, id)
      redis.call('HSET', K.tasks, id, build(h))
      out[#out + 1] = id
      out[#out + 1] = build(h)
      need = need - 1
    end
  end
  if not fresh then break end
end
count_outcomes(K.minutes, K.minutes_index, now, ARGV[9], 'd', died, died_by_type)
publish_ended(ARGV[8], ended)
return out
