-- Shared helpers. Every quantity is an integer below 2^53 (microseconds,
-- credits), exact in a Lua double. Numbers are written to Redis with
-- string.format('%.0f') because tostring() keeps only 14 digits.
pcall(redis.replicate_commands)
local MAX = 9007199254740991 -- 2^53 - 1
local DAY = 86400000000
-- The throttle's ranks of locked members: 2^52 + the lockout's end (µs),
-- above every unlocked member's rank (its last failure, µs) and exact.
local LOCKED = 4503599627370496
local floor = math.floor

local function s(n) return string.format('%.0f', n) end

local function now_of(arg)
  if arg ~= nil and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Relative TTL in ms for state idle at `idle` (microseconds), at least 1.
local function ttl_ms(idle, now)
  local ms = floor((idle - now + 999) / 1000)
  if ms < 1 then ms = 1 end
  return ms
end

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_year_month(days)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local m
  if mp < 10 then m = mp + 3 else m = mp - 9 end
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

local function month_start(t)
  local y, m = civil_year_month(floor(t / DAY))
  return days_from_civil(y, m, 1) * DAY
end

local function next_month_start(t)
  local y, m = civil_year_month(floor(t / DAY))
  if m == 12 then y = y + 1; m = 1 else m = m + 1 end
  return days_from_civil(y, m, 1) * DAY
end

-- A balance: {r = remaining, m = refill amount, k = kind (0 none, 1 every,
-- 2 UTC day, 3 UTC month), p = period µs, a = refilled_at µs}.
local function read_balance(key)
  local v = redis.call('HMGET', key, 'r', 'm', 'k', 'p', 'a')
  if not v[1] then return nil end
  return { r = tonumber(v[1]), m = tonumber(v[2]) or 0, k = tonumber(v[3]) or 0,
           p = tonumber(v[4]) or 0, a = tonumber(v[5]) or 0 }
end

local function write_balance(key, b)
  redis.call('HSET', key, 'r', s(b.r), 'm', s(b.m), 'k', s(b.k), 'p', s(b.p), 'a', s(b.a))
end

local function period_start(b, t)
  if b.k == 1 then
    if t <= b.a then return b.a end
    return b.a + floor((t - b.a) / b.p) * b.p
  elseif b.k == 2 then
    return floor(t / DAY) * DAY
  end
  return month_start(t)
end

local function next_start(b, start)
  if b.k == 1 then return start + b.p
  elseif b.k == 2 then return start + DAY end
  return next_month_start(start)
end

-- Balance::refreshed
local function refreshed(b, now)
  if b.k == 0 then return b end
  local start = period_start(b, now)
  if start <= b.a then return b end
  local r = b.r
  if b.m > r then r = b.m end
  return { r = r, m = b.m, k = b.k, p = b.p, a = start }
end

-- Balance::next_refill_in (-1: no refill)
local function refill_in(b, now)
  if b.k == 0 then return -1 end
  local c = refreshed(b, now)
  local nxt = next_start(c, period_start(c, c.a))
  if nxt > MAX then nxt = MAX end
  local d = nxt - now
  if d < 0 then d = 0 end
  return d
end
