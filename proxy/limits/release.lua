-- Take back the budget reservations of requests whose acquire reply never reached the gateway (it timed
-- out: the script may have run or not). KEYS: each such request's held key, written by acquire.lua only
-- if it ran: budget key -> amount reserved. Deleting it makes a second release of the same request do
-- nothing. The budget keys share the held keys' hash tag, so on Redis Cluster they are in their slot.
for i = 1, #KEYS do
  local held = redis.call('HGETALL', KEYS[i])
  for j = 1, #held, 2 do
    if redis.call('EXISTS', held[j]) == 1 then redis.call('INCRBYFLOAT', held[j], -tonumber(held[j + 1])) end
  end
  redis.call('DEL', KEYS[i])
end
return 1
