
-- admit: every check of one admission, all or nothing, on the server's clock.
-- KEYS[i] and ARGV[3i-2], ARGV[3i-1], ARGV[3i] are check i: its kind ('r' a GCRA bucket,
-- 'd' or 'm' a budget key to which the period instance is appended), its limit (units per
-- minute, or micro-dollars) and the amount this admission takes.
-- Returns {admitted (1 or 0), refused check (1-based; 0 when admitted), wait in µs, day,
-- month}, then two numbers per check: remaining and µs to full for a bucket, micro-dollars
-- spent and 0 for a budget; after the admission when admitted, as they stood when refused.
-- Pre-5 servers replicate a script verbatim, which TIME forbids; later ones ignore this.
if redis.replicate_commands then redis.replicate_commands() end
local now = now_us()
local day, day_end, month, month_end = periods(now)
local before, after, writes = {}, {}, {}
local refused, longest = 0, 0
for i = 1, #KEYS do
  local kind, limit, amount = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local failed, wait = false, 0
  if kind == 'r' then
    local us, frac = gcra_get(KEYS[i])
    before[2 * i - 1], before[2 * i] = gcra_window(limit, us, frac, now)
    local nus, nfrac
    nus, nfrac, wait = gcra_take(limit, us, frac, now, amount)
    failed = wait > 0
    after[2 * i - 1], after[2 * i] = gcra_window(limit, nus, nfrac, now)
    writes[i] = {nus, nfrac}
  else
    local key = KEYS[i] .. ':' .. (kind == 'd' and day or month)
    local spent = tonumber(redis.call('GET', key) or '0')
    before[2 * i - 1], before[2 * i] = spent, 0
    after[2 * i - 1], after[2 * i] = spent + amount, 0
    writes[i] = key
    -- Passes while anything is left, however little: a reservation may overshoot by
    -- itself, never by more.
    failed = spent >= limit
    if failed then wait = (kind == 'd' and day_end or month_end) * 1000000 - now end
  end
  if failed and (refused == 0 or wait > longest) then refused, longest = i, wait end
end
if refused > 0 then
  return {0, refused, longest, day, month, unpack(before)}
end
for i = 1, #KEYS do
  local kind = ARGV[3 * i - 2]
  if kind == 'r' then
    gcra_set(KEYS[i], writes[i][1], writes[i][2], now)
  else
    redis.call('INCRBY', writes[i], ARGV[3 * i])
    -- Kept a day past the period's end, so a late settle still finds it.
    redis.call('EXPIREAT', writes[i], (kind == 'd' and day_end or month_end) + 86400)
  end
end
return {1, 0, 0, day, month, unpack(after)}
