-- Shared by admit.lua and settle.lua: the Lua twin of gcra.rs and calendar.rs, same names,
-- same steps, in integer-valued doubles (exact below 2^53; see gcra.rs for the bounds).

local WINDOW = 60000000

-- a = q * b + r with 0 <= r < b, exactly: the float quotient may round across an integer.
local function divmod(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q, r = q - 1, r + b
  elseif r >= b then
    q, r = q + 1, r - b
  end
  return q, r
end

-- n units as time: whole microseconds, and the remainder in 1/limit microseconds.
local function gcra_cost(limit, n)
  return divmod(n * WINDOW, limit)
end

local function gcra_fit(limit, frac)
  return math.min(frac, limit - 1)
end

local function gcra_start(limit, us, frac, now)
  if us < now then return now, 0 end
  return us, gcra_fit(limit, frac)
end

local function gcra_add(limit, us, frac, n)
  local q, r = gcra_cost(limit, n)
  frac = frac + r
  if frac >= limit then
    q, frac = q + 1, frac - limit
  end
  return us + q, frac
end

local function gcra_refund(limit, us, frac, now, n)
  frac = gcra_fit(limit, frac)
  local q, r = gcra_cost(limit, n)
  if frac < r then
    q, frac = q + 1, frac + limit
  end
  us, frac = us - q, frac - r
  if us < now then return now, 0 end
  return us, frac
end

-- Microseconds until the TAT is within one window of now: zero when it is.
local function gcra_wait(us, frac, now)
  local ahead = math.max(us - now, 0) + (frac > 0 and 1 or 0)
  return math.max(ahead - WINDOW, 0)
end

-- The TAT after taking n units, and the wait (zero: the take fits).
local function gcra_take(limit, us, frac, now, n)
  us, frac = gcra_start(limit, us, frac, now)
  us, frac = gcra_add(limit, us, frac, n)
  return us, frac, gcra_wait(us, frac, now)
end

-- extra > 0: charged whatever the bucket holds; < 0: given back, never beyond full.
local function gcra_settle(limit, us, frac, now, extra)
  if extra < 0 then return gcra_refund(limit, us, frac, now, -extra) end
  us, frac = gcra_start(limit, us, frac, now)
  return gcra_add(limit, us, frac, extra)
end

-- Units left, and microseconds until full.
local function gcra_window(limit, us, frac, now)
  us, frac = gcra_start(limit, us, frac, now)
  local ahead = us - now
  local reset = ahead + (frac > 0 and 1 or 0)
  if ahead >= WINDOW then return 0, reset end
  local remaining = divmod((WINDOW - ahead) * limit - frac, WINDOW)
  return remaining, reset
end

-- A bucket is stored as "us frac"; a missing one is fresh (the epoch: full).
local function gcra_get(key)
  local value = redis.call('GET', key)
  if value then
    local us, frac = string.match(value, '^(%d+) (%d+)$')
    if us then return tonumber(us), tonumber(frac) end
  end
  return 0, 0
end

-- Kept a minute past full: by the time it expires, it reads as full, which it is.
local function gcra_set(key, us, frac, now)
  local ttl = math.floor((us - now) / 1000) + 60001
  redis.call('SET', key, string.format('%.0f %.0f', us, frac), 'PX', string.format('%.0f', ttl))
end

-- Days since the epoch to the UTC civil year and month (Howard Hinnant's civil_from_days).
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- Days since the epoch of the first of month m of year y (days_from_civil).
local function first_of(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * (m > 2 and m - 3 or m + 9) + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Like Periods::at: day, day end, month (year * 12 + month - 1), month end; ends in seconds.
local function periods(now)
  local day = math.floor(math.floor(now / 1000000) / 86400)
  local y, m = civil(day)
  local ny, nm = y, m + 1
  if nm == 13 then ny, nm = y + 1, 1 end
  return day, (day + 1) * 86400, y * 12 + m - 1, first_of(ny, nm) * 86400
end

-- The server's clock, shared by every replica, in microseconds.
local function now_us()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000000 + tonumber(time[2])
end
