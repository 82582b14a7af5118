
-- settle: reconciles one grant on the server's clock.
-- KEYS[i] and ARGV[3i-2], ARGV[3i-1], ARGV[3i] are item i: its kind ('r' a GCRA bucket, 'b'
-- a budget key with its period instance), the bucket's limit (0 for a budget) and the extra
-- amount: actual minus reserved, > 0 charged, < 0 given back.
if redis.replicate_commands then redis.replicate_commands() end
local now = now_us()
for i = 1, #KEYS do
  local kind, limit, extra = ARGV[3 * i - 2], tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  if kind == 'r' then
    local us, frac = gcra_get(KEYS[i])
    us, frac = gcra_settle(limit, us, frac, now, extra)
    gcra_set(KEYS[i], us, frac, now)
  elseif redis.call('EXISTS', KEYS[i]) == 1 then
    -- A budget key gone is a period long over: nothing left to reconcile. INCRBY keeps the
    -- key's expiry; a refund never takes spending below zero.
    local spent = redis.call('INCRBY', KEYS[i], ARGV[3 * i])
    if spent < 0 then redis.call('INCRBY', KEYS[i], string.format('%.0f', -spent)) end
  end
end
return 1
