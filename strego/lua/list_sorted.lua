-- list_sorted (read only): a page of the tasks of a sorted set (scheduled or retry by due time,
-- ascending; dead, completed or cancelled by end time, descending), ties by id, from just after
-- a cursor position (a score and an id). The position is found by rank: ZCOUNT bounds the
-- entries of that score, and a binary search among them finds the id's place (an id that left
-- the set still has one), O(log^2 n) whatever the depth.
-- KEYS: tasks, listed
-- ARGV: 1 order ('asc' | 'desc'), 2 limit, 3 cursor score ('' = from the start), 4 cursor id,
--       5 floor: entries scored at or below it are not listed ('' = none)
-- Returns {more, {id, record (false when gone), score, ...}}: more is 1 when entries follow the
-- last one returned.
local unpack = unpack or table.unpack  -- Lua 5.1 (Redis) or 5.4 (some emulators)
local key, desc, limit = K.listed, ARGV[1] == 'desc', tonumber(ARGV[2])
local score, id, floor = ARGV[3], ARGV[4], tonumber(ARGV[5])

-- a < b byte by byte, as Redis orders the members of one score (Lua's `<` follows the locale)
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- The rank of the first entry after (score, id), or at or after it when not `strict`.
local function rank_of(strict)
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
  local hi = redis.call('ZCOUNT', key, '-inf', score)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local member = redis.call('ZRANGE', key, mid, mid)[1]
    if before(id, member) or (not strict and member == id) then hi = mid else lo = mid + 1 end
  end
  return lo
end

-- one entry more than a page, to know whether another page follows
local entries
if desc then
  local first = 0
  if score ~= '' then first = redis.call('ZCARD', key) - rank_of(false) end
  entries = redis.call('ZREVRANGE', key, first, first + limit, 'WITHSCORES')
else
  local first = 0
  if score ~= '' then first = rank_of(true) end
  entries = redis.call('ZRANGE', key, first, first + limit, 'WITHSCORES')
end
local ids, more = {}, 0
for i = 1, #entries, 2 do
  if floor and tonumber(entries[i + 1]) <= floor then break end
  if i > 2 * limit then
    more = 1
    break
  end
  ids[#ids + 1] = entries[i]
end
-- one HMGET for the batch: far cheaper than a call per entry
local recs = #ids > 0 and redis.call('HMGET', K.tasks, unpack(ids)) or {}
local out = {}
for i, id in ipairs(ids) do
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = id, recs[i], entries[2 * i]
end
return {more, out}
