-- The admission: apikey::limits::decide, line by line.
-- KEYS: 1 rate state, 2 key balance, 3 owner balance, 4 idempotency record
--       (per key id and token)
-- ARGV: 1 now µs ('' = Redis TIME), 2 minute limit (-1 = none),
--       3 hour limit (-1 = none), 4 charge (0/1), 5 cost, 6 owner (0/1),
--       7 idempotency TTL ms (0 = none), 8 the admission's fingerprint
-- Reply: {now, kind, window, limit, remaining, reset_after, retry_after,
--         key_rem, owner_rem, scope, short_rem, refill_in}
--   kind 0 admitted, 1 rate limited, 2 credits exhausted, 3 the token is
--   bound to a different admission (nothing decided); window -1 = no
--   window info; -1 elsewhere = absent.
local now = now_of(ARGV[1])
local idem_ttl = tonumber(ARGV[7])
local fingerprint = ARGV[8]
if idem_ttl > 0 then
  -- A record is '<verdict>;<fingerprint>': the verdict is digits, '-' and
  -- ',' only, so the first ';' ends it. It answers only the admission it
  -- was recorded for.
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sep = string.find(prev, ';', 1, true)
    if not sep or string.sub(prev, sep + 1) ~= fingerprint then
      return { now, 3, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1 }
    end
    local out = {}
    for v in string.gmatch(string.sub(prev, 1, sep - 1), '[^,]+') do out[#out + 1] = tonumber(v) end
    return out
  end
end

local function reply(r)
  if idem_ttl > 0 then
    local parts = {}
    for i = 1, #r do parts[i] = s(r[i]) end
    redis.call('SET', KEYS[4], table.concat(parts, ',') .. ';' .. fingerprint, 'PX', idem_ttl)
  end
  return r
end

local periods = { 60000000, 3600000000 }
local limits = { tonumber(ARGV[2]), tonumber(ARGV[3]) }

-- A zero limit admits nothing; no state is read or written.
for w = 1, 2 do
  if limits[w] == 0 then
    return reply({ now, 1, w - 1, 0, 0, periods[w], periods[w], -1, -1, -1, -1, -1 })
  end
end

local st = redis.call('HMGET', KEYS[1], 'm', 'h')
local tats = { tonumber(st[1]) or 0, tonumber(st[2]) or 0 }
local new_tats = { tats[1], tats[2] }
local enforced = false
local after, before, refusal = nil, nil, nil

-- Least remaining first; ties: the later reset; full ties keep the first.
local function better(c, b)
  if b == nil then return true end
  if c.rem ~= b.rem then return c.rem < b.rem end
  return c.reset > b.reset
end

for w = 1, 2 do
  local l = limits[w]
  if l > 0 then
    enforced = true
    local t = floor((periods[w] + l - 1) / l)
    local tau = t * (l - 1)
    local function rem(ahead)
      if ahead > tau then return 0 end
      local n = floor((tau - ahead) / t) + 1
      if n > l then n = l end
      return n
    end
    local tat = tats[w]
    if now > tat then tat = now end
    local ahead = tat - now
    if ahead > tau then
      local wait = ahead - tau
      if refusal == nil or wait > refusal.wait then
        refusal = { wait = wait, w = w - 1, l = l, reset = ahead }
      end
    elseif tat + t > MAX then
      if refusal == nil or t > refusal.wait then
        refusal = { wait = t, w = w - 1, l = l, reset = t }
      end
    else
      new_tats[w] = tat + t
      local a = { w = w - 1, l = l, rem = rem(ahead + t), reset = ahead + t }
      local b = { w = w - 1, l = l, rem = rem(ahead), reset = ahead }
      if better(a, after) then after = a end
      if better(b, before) then before = b end
    end
  end
end

if refusal then
  return reply({ now, 1, refusal.w, refusal.l, 0, refusal.reset, refusal.wait, -1, -1, -1, -1, -1 })
end

local function info(i)
  if i == nil then return -1, -1, -1, -1 end
  return i.w, i.l, i.rem, i.reset
end

local function write_rate()
  if enforced then
    redis.call('HSET', KEYS[1], 'm', s(new_tats[1]), 'h', s(new_tats[2]))
    local idle = new_tats[1]
    if new_tats[2] > idle then idle = new_tats[2] end
    redis.call('PEXPIRE', KEYS[1], ttl_ms(idle, now))
  end
end

if ARGV[4] ~= '1' then
  write_rate()
  local w, l, r, reset = info(after)
  return reply({ now, 0, w, l, r, reset, -1, -1, -1, -1, -1, -1 })
end

local cost = tonumber(ARGV[5])
local needed = cost
if needed < 1 then needed = 1 end
local key = read_balance(KEYS[2])
local owner = nil
if ARGV[6] == '1' then owner = read_balance(KEYS[3]) end
if key then key = refreshed(key, now) end
if owner then owner = refreshed(owner, now) end

local short, scope = nil, -1
if key and key.r < needed then short = key; scope = 0
elseif owner and owner.r < needed then short = owner; scope = 1 end
if short then
  local w, l, r, reset = info(before)
  return reply({ now, 2, w, l, r, reset, -1, -1, -1, scope, short.r, refill_in(short, now) })
end

write_rate()
local key_rem, owner_rem = -1, -1
if key then
  local d = cost
  if d > key.r then d = key.r end
  key.r = key.r - d
  write_balance(KEYS[2], key)
  key_rem = key.r
end
if owner then
  local d = cost
  if d > owner.r then d = owner.r end
  owner.r = owner.r - d
  write_balance(KEYS[3], owner)
  owner_rem = owner.r
end
local w, l, r, reset = info(after)
return reply({ now, 0, w, l, r, reset, -1, key_rem, owner_rem, -1, -1, -1 })
