-- claim_stale: active tasks whose lease expired (lease <= now) -> active, held by `consumer`
-- (XCLAIM of their stream entry), deliveries + 1, new lease; or -> dead when their deliveries
-- reached max_deliveries. The `leases` zset is scored by expiry, so every stale task is found
-- however many fresh ones there are. Bounded work: besides the `count` tasks it claims, a call
-- settles at most 1,000 stale entries otherwise (to dead, or dropped), and walks at most 1,000
-- pending-list entries looking for the entries of unreadable records; the next call goes on.
-- KEYS: streams, tasks, leases, dead, consumers
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 count, 5 lease_ms, 6 max_deliveries,
--       7 the error recorded for a task that exceeded max_deliveries
-- Returns {id, record, ...} of the claimed tasks.
--#include lib/record.lua
--#include lib/history.lua
local now, group, consumer = clock(ARGV[1]), ARGV[2], ARGV[3]
local need, max_deliveries = tonumber(ARGV[4]), tonumber(ARGV[6])
redis.call('HSET', K.consumers, consumer, now)
local lease_until = add_ms(now, ARGV[5])
local out, seen = {}, {}
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
    elseif h.deliveries >= max_deliveries then
      settle = settle - 1
      unlink(stream, group, h.sid)
      redis.call('ZREM', K.leases, id)
      h.state, h.ended, h.sid, h.consumer, h.error = 'd', now, '', '', ARGV[7]
      redis.call('ZADD', K.dead, now, id)
      redis.call('HSET', K.tasks, id, build(h))
      history(id, 'd', now, h.retried, h.error)
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
      history(id, 'a', now, h.retried, '', consumer)
    end
  end
  if not fresh then break end
end
return out
