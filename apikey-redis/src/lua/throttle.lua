-- One failure of a key id or address, shared by every instance, in a
-- capped table: at most `cap` members, so attacker-chosen addresses cannot
-- grow Redis.
-- KEYS: 1 the table (hash: member -> 'failures,window start,locked until'),
--       2 its eviction ranks (sorted set: member -> rank).
-- ARGV: 1 now µs ('' = Redis TIME), 2 max failures, 3 window µs,
--       4 lockout µs, 5 the member (key id or address), 6 cap.
-- Reply: {now, locked_until (0 = not locked), failures}
local now = now_of(ARGV[1])
local max, window, lockout = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local member, cap = ARGV[5], tonumber(ARGV[6])
-- Ranks: unlocked members by when last seen; locked ones after every
-- unlocked one, by the end of their lockout (LOCKED + µs).
local prev = redis.call('HGET', KEYS[1], member)
local f, ws, lu = 0, now, 0
if prev then
  local a, b, c = string.match(prev, '^(%d+),(%d+),(%d+)$')
  f, ws, lu = tonumber(a) or 0, tonumber(b) or now, tonumber(c) or 0
end
if lu > 0 and lu <= now then lu = 0; f = 0; ws = now end
if lu == 0 and now - ws >= window then f = 0; ws = now end
if lu > now then return { now, lu, f } end
f = f + 1
if f >= max and lockout > 0 then lu = now + lockout end
if not prev then
  -- Make room: an ended lockout first, else the lowest rank (stale or
  -- least recently seen unlocked members, then locked ones ending soonest).
  local n = redis.call('ZCARD', KEYS[2])
  while n >= cap do
    local victim = redis.call('ZRANGEBYSCORE', KEYS[2], LOCKED, s(LOCKED + now), 'LIMIT', 0, 1)[1]
    if victim then
      redis.call('ZREM', KEYS[2], victim)
    else
      victim = redis.call('ZPOPMIN', KEYS[2])[1]
    end
    if not victim then break end
    redis.call('HDEL', KEYS[1], victim)
    n = n - 1
  end
end
redis.call('HSET', KEYS[1], member, s(f) .. ',' .. s(ws) .. ',' .. s(lu))
local rank = now
if lu > now then rank = LOCKED + lu end
redis.call('ZADD', KEYS[2], s(rank), member)
-- Every member is idle by now + max(window, lockout): so is the table.
local idle = now + window
if now + lockout > idle then idle = now + lockout end
local ttl = ttl_ms(idle, now)
redis.call('PEXPIRE', KEYS[1], s(ttl))
redis.call('PEXPIRE', KEYS[2], s(ttl))
return { now, lu, f }
