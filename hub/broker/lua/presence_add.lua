-- Record or refresh one client in a channel's presence until now + ttl (Redis's clock, so
-- every node agrees on expiry). Both keys live as long as their longest-lived entry, so the
-- entries of a node that died go away by themselves.
--
-- KEYS[1] sorted set (client id → expiry ms)   KEYS[2] hash (client id → encoded info)
-- ARGV[1] ttl ms   ARGV[2] client id   ARGV[3] encoded info

local now = redis.call('time')
local ttl = tonumber(ARGV[1])
local expires_at = now[1] * 1000 + math.floor(now[2] / 1000) + ttl
redis.call('zadd', KEYS[1], expires_at, ARGV[2])
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
for _, key in ipairs(KEYS) do
  if redis.call('pttl', key) < ttl then
    redis.call('pexpire', key, ttl)
  end
end
return 1
