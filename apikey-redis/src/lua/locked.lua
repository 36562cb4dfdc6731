-- The lockouts of a throttle table that end at or after a time: how an
-- instance learns of lockouts reached elsewhere before it sees a failure.
-- KEYS: 1 the table's ranks. ARGV: 1 now µs ('' = Redis TIME),
-- 2 only lockouts ending at or after this µs (earlier: now), 3 most.
-- Reply: {now, member, locked_until, member, locked_until, ...} as strings
local now = now_of(ARGV[1])
local from = tonumber(ARGV[2])
if from < now then from = now + 1 end
local r = redis.call('ZRANGEBYSCORE', KEYS[1], s(LOCKED + from), '+inf', 'WITHSCORES',
  'LIMIT', 0, tonumber(ARGV[3]))
local out = { s(now) }
for i = 1, #r, 2 do
  out[#out + 1] = r[i]
  out[#out + 1] = s(tonumber(r[i + 1]) - LOCKED)
end
return out
