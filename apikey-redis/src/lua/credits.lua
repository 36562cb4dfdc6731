-- Credit management. KEYS: 1 the balance.
-- ARGV: 1 now µs ('' = Redis TIME), 2 op ('set', 'add', 'get'),
--       set: 3 remaining, 4 refill amount, 5 kind, 6 period µs
--       add: 3 amount
-- Reply: {now, exists (0/1), r, m, k, p, a}
local now = now_of(ARGV[1])
local op = ARGV[2]
if op == 'set' then
  local b = { r = tonumber(ARGV[3]), m = tonumber(ARGV[4]), k = tonumber(ARGV[5]),
              p = tonumber(ARGV[6]), a = now }
  write_balance(KEYS[1], b)
  return { now, 1, b.r, b.m, b.k, b.p, b.a }
end
local b = read_balance(KEYS[1])
if not b then return { now, 0, 0, 0, 0, 0, 0 } end
if op == 'add' then
  b = refreshed(b, now)
  b.r = b.r + tonumber(ARGV[3])
  if b.r > MAX then b.r = MAX end
  write_balance(KEYS[1], b)
end
return { now, 1, b.r, b.m, b.k, b.p, b.a }
