-- A channel's live presence: expired entries are dropped first, then the rest returned.
--
-- KEYS[1] sorted set (client id → expiry ms)   KEYS[2] hash (client id → encoded info)
--
-- Returns the hash as HGETALL gives it: client id, info, client id, info...

local now = redis.call('time')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
local expired = redis.call('zrangebyscore', KEYS[1], '-inf', now_ms)
if #expired > 0 then
  redis.call('zremrangebyscore', KEYS[1], '-inf', now_ms)
  for i = 1, #expired, 1000 do
    redis.call('hdel', KEYS[2], unpack(expired, i, math.min(i + 999, #expired)))
  end
end
return redis.call('hgetall', KEYS[2])
