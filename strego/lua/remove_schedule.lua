-- remove_schedule: a periodic schedule -> gone (definition and state); its tasks stay.
-- KEYS: crons, cron_defs
-- ARGV: 1 schedule id
-- Returns 1 when it was stored, else 0.
local n = redis.call('HDEL', K.crons, ARGV[1])
redis.call('HDEL', K.cron_defs, ARGV[1])
return n
