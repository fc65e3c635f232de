-- Check every scope of one request and, only if all pass, reserve them: one atomic round trip.
-- KEYS: one per check, then, when a check is a budget, the request's held key. ARGV: the request id,
-- then per check ARGS_PER_CHECK values: kind, limit, ttl (a budget's time left in its period; a
-- parallel slot's TTL), amount, lease units asked for.
-- The upper-case names are constants the loader prepends from Python (proxy/limits/redis_backend.py).
-- Reply: {0, failing check's index, seconds to wait}; {1, budget check's index, 0} when that budget's
-- spend key is absent (lost with Redis's data, or a period not seeded yet: nothing is reserved, and the
-- caller re-seeds it from the ledger); or one bulk string "remaining reset leased ..." (three per check),
-- which is cheaper to read than an array. A parallel slot's score is when it was last renewed.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rid = ARGV[1]
local out = {}
local new = {}
local n = (#ARGV - 1) / ARGS_PER_CHECK
for i = 1, n do
  local b = 1 + (i - 1) * ARGS_PER_CHECK
  local kind, limit, ttl, amount = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'gcra' then
    local step = WINDOW_S / limit
    local tat = tonumber(redis.call('GET', KEYS[i])) or now
    if tat < now then tat = now end
    local v = tat + amount * step
    if v - now > WINDOW_S + GCRA_SLACK_S then return {0, i, tostring(v - WINDOW_S - now)} end
    -- a lease, if asked for, only while enough of the window stays free after it for other replicas
    local lease = tonumber(ARGV[b + 5])
    if lease > 0 and v + lease * step - now <= LEASE_MAX_AHEAD_S then v = v + lease * step else lease = 0 end
    new[i] = v
    out[#out + 1] = tostring((now + WINDOW_S - v) / step)
    out[#out + 1] = tostring(v - now)
    out[#out + 1] = tostring(lease)
  elseif kind == 'parallel' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - ttl)
    local n = redis.call('ZCARD', KEYS[i])
    if n + 1 > limit then return {0, i, tostring(PARALLEL_RETRY_S)} end
    out[#out + 1] = tostring(limit - n - 1)
    out[#out + 1] = '0'
    out[#out + 1] = '0'
  else
    local spent = tonumber(redis.call('GET', KEYS[i]))
    if spent == nil then return {1, i, '0'} end
    if spent + amount > limit + BUDGET_SLACK_USD then return {0, i, tostring(ttl)} end
    out[#out + 1] = tostring(limit - spent - amount)
    out[#out + 1] = tostring(ttl)
    out[#out + 1] = '0'
  end
end
for i = 1, n do
  local b = 1 + (i - 1) * ARGS_PER_CHECK
  local kind, ttl, amount = ARGV[b + 1], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'gcra' then
    -- all 17 digits: tostring keeps 14, which at today's epoch rounds away more than one request's
    -- step at high limits, so counts would drift with every request
    redis.call('SET', KEYS[i], string.format('%.17g', new[i]), 'PX',
               math.ceil((new[i] - now) * 1000) + GCRA_KEY_LINGER_MS)
  elseif kind == 'parallel' then
    redis.call('ZADD', KEYS[i], now, rid)
    redis.call('PEXPIRE', KEYS[i], math.ceil(ttl * 1000))
  else
    redis.call('INCRBYFLOAT', KEYS[i], amount)
    if ttl > 0 then redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + BUDGET_KEY_LINGER_S) end
  end
end
if #KEYS > n then
  -- the budget reservations by budget key, kept a while: if the caller never reads this reply (it timed
  -- out), release.lua takes them back once the store answers again
  for i = 1, n do
    local b = 1 + (i - 1) * ARGS_PER_CHECK
    if ARGV[b + 1] == 'budget' then redis.call('HSET', KEYS[#KEYS], KEYS[i], ARGV[b + 4]) end
  end
  redis.call('EXPIRE', KEYS[#KEYS], HELD_TTL_S)
end
return table.concat(out, ' ')
