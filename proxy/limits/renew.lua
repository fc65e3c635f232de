-- Keep max_parallel slots alive: one call per replica per renewal interval, for all its running requests.
-- KEYS: one per slot. ARGV: per slot its request id and the slot TTL in ms. A slot already dropped (its
-- renewal came too late) is not restarted: XX only updates entries that are still there.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now, ARGV[2 * i - 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2 * i])
end
return 1
