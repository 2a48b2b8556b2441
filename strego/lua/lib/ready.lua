-- lib/ready.lua: the guard of a queue's `ready` counter (docs/architecture.md, the `ready` rule).
-- A script that will INCR it reads it before its first write: a key of another type fails that
-- GET, and a string that is no integer (which the INCR at the end would refuse) is refused here,
-- so either way the call fails with nothing written.
local function ready_refused(key)
  local value = redis.call('GET', key)
  if value and not string.match(value, '^%-?%d+$') then
    return redis.error_reply('WRONGTYPE the ready counter holds a value that is not an integer')
  end
  return nil
end

-- Tasks became pending: move the counter. On Cluster (SHARDED_NOTIFY, set by the loader) also
-- publish its new value on the queue's sharded channel, named like the counter (same slot): the
-- wake-up of fetches that wait (strego/backends/redis/wakeups.py). One call per script at most.
local function ready_moved()
  local n = redis.call('INCR', K.ready)
  if SHARDED_NOTIFY then redis.call('SPUBLISH', K.ready, n) end
end
