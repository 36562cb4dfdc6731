-- One failure of a key id or address, shared by every instance.
-- KEYS: 1 the throttle entry. ARGV: 1 now µs ('' = Redis TIME),
-- 2 max failures, 3 window µs, 4 lockout µs.
-- Reply: {now, locked_until (0 = not locked), failures}
local now = now_of(ARGV[1])
local max, window, lockout = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 'f', 'w', 'l')
local f, ws, lu = tonumber(v[1]) or 0, tonumber(v[2]) or now, tonumber(v[3]) or 0
if lu > 0 and lu <= now then lu = 0; f = 0; ws = now end
if lu == 0 and now - ws >= window then f = 0; ws = now end
if lu > now then return { now, lu, f } end
f = f + 1
if f >= max and lockout > 0 then lu = now + lockout end
redis.call('HSET', KEYS[1], 'f', s(f), 'w', s(ws), 'l', s(lu))
local idle = ws + window
if lu > idle then idle = lu end
redis.call('PEXPIRE', KEYS[1], ttl_ms(idle, now))
return { now, lu, f }
