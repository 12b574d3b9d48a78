-- Drop one client from a channel's presence.
--
-- KEYS[1] sorted set (client id → expiry ms)   KEYS[2] hash (client id → encoded info)
-- ARGV[1] client id

redis.call('zrem', KEYS[1], ARGV[1])
return redis.call('hdel', KEYS[2], ARGV[1])
