
-- admit: every check of one admission, all or nothing, on the server's clock.
-- KEYS[i] and ARGV[4i-3] to ARGV[4i] are check i: its kind ('r' a GCRA bucket, 'd' or 'm' a
-- budget key to which the period instance is appended), its limit (units per minute, or
-- micro-dollars), and the least and most this admission takes: as much as fits, at least
-- the least (Amount::within).
-- Returns {admitted (1 or 0), refused check (1-based; 0 when admitted), wait in µs, day,
-- month}, then three numbers per check: remaining and µs to full for a bucket, micro-dollars
-- spent and 0 for a budget, after the admission when admitted, as they stood when refused;
-- and the amount taken.
-- Pre-5 servers replicate a script verbatim, which TIME forbids; later ones ignore this.
if redis.replicate_commands then redis.replicate_commands() end
local now = now_us()
local day, day_end, month, month_end = periods(now)
local before, after, writes, taken = {}, {}, {}, {}
local refused, longest = 0, 0
local function within(room, least, most) return math.max(least, math.min(most, room)) end
for i = 1, #KEYS do
  local kind, limit = ARGV[4 * i - 3], tonumber(ARGV[4 * i - 2])
  local least, most = tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i])
  local failed, wait = false, 0
  if kind == 'r' then
    local us, frac = gcra_get(KEYS[i])
    local remaining, reset = gcra_window(limit, us, frac, now)
    before[3 * i - 2], before[3 * i - 1] = remaining, reset
    taken[i] = within(remaining, least, most)
    local nus, nfrac
    nus, nfrac, wait = gcra_take(limit, us, frac, now, taken[i])
    failed = wait > 0
    after[3 * i - 2], after[3 * i - 1] = gcra_window(limit, nus, nfrac, now)
    writes[i] = {nus, nfrac}
  else
    local key = KEYS[i] .. ':' .. (kind == 'd' and day or month)
    local spent = tonumber(redis.call('GET', key) or '0')
    taken[i] = within(math.max(limit - spent, 0), least, most)
    before[3 * i - 2], before[3 * i - 1] = spent, 0
    after[3 * i - 2], after[3 * i - 1] = spent + taken[i], 0
    writes[i] = key
    -- A spent budget refuses even a free request; any other must fit.
    failed = spent >= limit or spent + taken[i] > limit
    if failed then wait = (kind == 'd' and day_end or month_end) * 1000000 - now end
  end
  before[3 * i], after[3 * i] = taken[i], taken[i]
  if failed and (refused == 0 or wait > longest) then refused, longest = i, wait end
end
if refused > 0 then
  return {0, refused, longest, day, month, unpack(before)}
end
for i = 1, #KEYS do
  local kind = ARGV[4 * i - 3]
  if kind == 'r' then
    gcra_set(KEYS[i], writes[i][1], writes[i][2], now)
  else
    redis.call('INCRBY', writes[i], string.format('%.0f', taken[i]))
    -- Kept a day past the period's end, so a late settle still finds it.
    redis.call('EXPIREAT', writes[i], (kind == 'd' and day_end or month_end) + 86400)
  end
end
return {1, 0, 0, day, month, unpack(after)}
