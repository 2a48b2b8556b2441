-- fetch: pending -> active. Delivers up to `count` tasks of one queue to `consumer` with
-- XREADGROUP (never blocking here), highest priority first, oldest first within a priority.
-- KEYS: streams, tasks, leases, consumers, paused, dead, ready
-- ARGV: 1 now ('' = Redis TIME), 2 group, 3 consumer, 4 count, 5 lease_ms
-- Returns {'OK', {id, record, ...}, last_ids, ready} | {'PAUSED', {}, {}, ready}. last_ids (only
-- when fewer than `count` were started: nothing is left to deliver) holds each stream's newest
-- entry id ('0-0' when it has none), for the caller's XREAD BLOCK: anything added after the
-- script is then seen. ready is the queue's ready counter ('' = none): while it holds that value,
-- nothing became pending. A task whose record header does not parse goes to dead
-- (bury_unreadable) instead of being started. Bounded work: besides the `count` tasks it starts,
-- a call drops at most STRAYS entries whose task is no longer pending; when it stops there,
-- last_ids is empty (more may be left: the caller fetches again, it does not wait).
--#include lib/record.lua
--#include lib/history_ids.lua

local now, group, consumer = clock(ARGV[1]), ARGV[2], ARGV[3]

-- fresh tasks are started by started_fresh (lib/record.lua), with these parts built once a call
local STARTED_HEAD, STARTED_TAIL = started_parts(now, consumer)

local need = tonumber(ARGV[4])
local STRAYS, dropped = 1000, 0
local ready = redis.call('GET', K.ready) or ''
redis.call('HSET', K.consumers, consumer, now)
if redis.call('EXISTS', K.paused) == 1 then return {E_PAUSED, {}, {}, ready} end
local lease_until = add_ms(now, ARGV[5])
-- the started tasks {id, record, ...} (both written to `tasks` and returned) and their leases
-- {until, id, ...}, n tasks each
local started_list, leases, n = {}, {}, 0
for prio = 10, 0, -1 do
  local stream = KEYS[1 + prio]
  while need > 0 and dropped < STRAYS and redis.call('EXISTS', stream) == 1 do
    local reply = redis.pcall('XREADGROUP', 'GROUP', group, consumer,
      'COUNT', need, 'STREAMS', stream, '>')
    if type(reply) == 'table' and reply.err then
      -- a stream that lost its group (deleted by hand) would fail every fetch: recreate it
      -- from 0, so entries never delivered are not lost
      if not string.find(reply.err, 'NOGROUP', 1, true) then return redis.error_reply(reply.err) end
      redis.call('XGROUP', 'CREATE', stream, group, '0')
      reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', need,
        'STREAMS', stream, '>')
    end
    local entries = read_entries(reply)
    if #entries == 0 then break end
    for _, entry in ipairs(entries) do
      local sid, id = entry[1], entry[2][2]
      local rec = redis.call('HGET', K.tasks, id)
      local started = rec and started_fresh(rec, sid, STARTED_HEAD, STARTED_TAIL)
      local h = not started and parse(rec)
      if h and h.state == 'p' and h.sid == sid then
        h.state, h.deliveries, h.started, h.consumer = 'a', h.deliveries + 1, now, consumer
        started = build(h)
      end
      if started then
        started_list[2 * n + 1], started_list[2 * n + 2] = id, started
        leases[2 * n + 1], leases[2 * n + 2] = lease_until, id
        n = n + 1
        need = need - 1
      elseif h and h.state == 'a' and h.sid == sid then
        -- delivered again after its group was recreated: still its task's entry, keep it
      else
        if rec and not h then bury_unreadable(K.tasks, K.dead, id, rec, now) end
        -- an entry whose task left pending some other way (or is buried now): drop it
        redis.call('XACK', stream, group, sid)
        redis.call('XDEL', stream, sid)
        dropped = dropped + 1
      end
    end
  end
  if need == 0 or dropped >= STRAYS then break end
end
-- one multi-member write per key; each stream entry is read once, so no id repeats
call_chunked('HSET', K.tasks, started_list)
call_chunked('ZADD', K.leases, leases)
history_ids('a', now, started_list, 2, consumer)
local last = {}
if need > 0 and dropped < STRAYS then
  for prio = 0, 10 do
    local newest = {}
    if redis.call('EXISTS', KEYS[1 + prio]) == 1 then
      newest = redis.call('XREVRANGE', KEYS[1 + prio], '+', '-', 'COUNT', 1)
    end
    last[prio + 1] = newest[1] and newest[1][1] or '0-0'
  end
end
return {'OK', started_list, last, ready}
