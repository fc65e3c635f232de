-- Apply corrections after requests: real usage in place of reservations, freed parallel slots, unused
-- lease units given back. KEYS: one per entry. ARGV: per entry ARGS_PER_ENTRY values: kind, limit,
-- delta (tokens or USD), request id. The upper-case names are constants the loader prepends from
-- Python (proxy/limits/redis_backend.py).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  local b = (i - 1) * ARGS_PER_ENTRY
  local kind, limit, delta, rid = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), ARGV[b + 4]
  if kind == 'parallel' then
    redis.call('ZREM', KEYS[i], rid)
  elseif kind == 'gcra' and delta ~= 0 then
    local tat = tonumber(redis.call('GET', KEYS[i]))
    if tat then
      local v = tat + delta * WINDOW_S / limit
      if v <= now then redis.call('DEL', KEYS[i])
      else redis.call('SET', KEYS[i], string.format('%.17g', v), 'PX',
                      math.ceil((v - now) * 1000) + GCRA_KEY_LINGER_MS) end
    end
  elseif kind == 'budget' and delta ~= 0 then
    -- a budget whose key is gone (expired, or never seeded here) is not restarted by a correction
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBYFLOAT', KEYS[i], delta) end
  end
end
return 1
