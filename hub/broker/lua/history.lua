-- Read a channel's stream: its top position and, optionally, retained publications.
-- A channel with no meta gets a new stream (epoch ARGV[2], offset 0), so the epoch a subscriber
-- is given stays valid; reading keeps the meta alive for at least meta ttl.
--
-- KEYS[1] meta hash   KEYS[2] history stream
-- ARGV[1] meta ttl ms   ARGV[2] epoch for a new stream   ARGV[3] limit (0: none, -1: all)
-- ARGV[4] "f": oldest first after offset ARGV[5]; "r": newest first before offset ARGV[5];
--         "t": newest first from the top
--
-- Returns {top offset, epoch, entries}; entries as XRANGE gives them (id = offset).

local meta_key, stream_key = KEYS[1], KEYS[2]
local meta = redis.call('hmget', meta_key, 'e', 's')
local epoch, top = meta[1], tonumber(meta[2]) or 0
if not epoch then
  epoch = ARGV[2]
  top = 0
  redis.call('del', stream_key)
  redis.call('hset', meta_key, 'e', epoch, 's', 0)
end
local meta_ttl = tonumber(ARGV[1])
if redis.call('pttl', meta_key) < meta_ttl then
  redis.call('pexpire', meta_key, meta_ttl)
end

local limit = tonumber(ARGV[3])
if limit == 0 then
  return {top, epoch, {}}
end
local count = {}
if limit > 0 then
  count = {'COUNT', limit}
end

if ARGV[4] == 't' then
  return {top, epoch, redis.call('xrevrange', stream_key, '+', '-', unpack(count))}
end
local offset = tonumber(ARGV[5])
if ARGV[4] == 'f' then
  return {top, epoch, redis.call('xrange', stream_key, offset + 1, '+', unpack(count))}
end
-- Paging back starts just before offset, and only if that publication is still retained.
local before = offset - 1
if before < 1 or before > top or #redis.call('xrange', stream_key, before, before) == 0 then
  return {top, epoch, {}}
end
return {top, epoch, redis.call('xrevrange', stream_key, before, '-', unpack(count))}
