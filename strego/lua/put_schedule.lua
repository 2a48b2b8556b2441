-- put_schedule: a periodic schedule's definition -> stored, its state kept when the definition is
-- the one stored already, else its revision moved on and its next tick set.
-- KEYS: crons, cron_defs
-- ARGV: 1 schedule id, 2 definition (bytes only Python reads), 3 next tick (ms)
-- Returns the state as stored: 'revision,next tick,last fire,last task id' (the last two '' before
-- the first fire).
local id = ARGV[1]
local state = redis.call('HGET', K.crons, id)
if state and redis.call('HGET', K.cron_defs, id) == ARGV[2] then return state end
local rev, last = 0, ','
if state then
  local r, rest = string.match(state, '^(%d+),%-?%d+,(.*)$')
  rev, last = tonumber(r), rest
end
state = string.format('%d,%s,%s', rev + 1, ARGV[3], last)
redis.call('HSET', K.cron_defs, id, ARGV[2])
redis.call('HSET', K.crons, id, state)
return state
