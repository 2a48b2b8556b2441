-- lib/registered.lua: the queue's `registered` flag, which stands in for its entry in the global
-- registry (another Cluster slot, which no script can write): a script that stores a task sets
-- the flag when it is unset and tells its caller, who then SADDs the queue; purge clears it
-- (after an SREM) when it leaves the queue empty. Once set, enqueues do not touch the registry.
-- The TTL (60 s) bounds how long a queue can stay unlisted if that SADD is lost (a producer that
-- died in between, a purge by an older strego): the first task stored after it registers again.
-- (docs/redis.md, "Registry")
local function newly_registered(key)
  return redis.call('SET', key, '1', 'NX', 'PX', 60000) ~= false
end
