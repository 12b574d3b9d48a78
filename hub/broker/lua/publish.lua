-- Publish one publication to a channel: assign its offset, keep it in the channel's bounded
-- history, and PUBLISH it to every subscribed node, all in one atomic step.
--
-- KEYS[1] meta hash (e = epoch, s = top offset)   KEYS[2] history stream
-- ARGV[1] pub/sub channel   ARGV[2] encoded publication   ARGV[3] history size (0: none)
-- ARGV[4] history ttl ms    ARGV[5] meta ttl ms            ARGV[6] epoch for a new stream
-- ARGV[7] publish command (PUBLISH, or SPUBLISH on a cluster)
--
-- Message sent: "p" .. offset .. ":" .. epoch .. ":" .. publication.
-- Returns {offset, epoch}: offset 0 without history, with the epoch of the stream if one exists
-- (or "" when none does; a publication without history never creates one).

local meta_key, stream_key = KEYS[1], KEYS[2]
local size = tonumber(ARGV[3])

if size == 0 then
  local epoch = redis.call('hget', meta_key, 'e') or ''
  redis.call(ARGV[7], ARGV[1], 'p0:' .. epoch .. ':' .. ARGV[2])
  return {0, epoch}
end

local epoch = redis.call('hget', meta_key, 'e')
if not epoch then
  -- No meta: the stream is new, or its meta expired or was flushed. Whatever history is left
  -- belongs to the lost epoch, so it goes with it.
  epoch = ARGV[6]
  redis.call('del', stream_key)
  redis.call('hset', meta_key, 'e', epoch)
end
local offset = redis.call('hincrby', meta_key, 's', 1)

-- Offset and epoch outlive the last publication by meta ttl; a shorter one never cuts it.
local meta_ttl = tonumber(ARGV[5])
if redis.call('pttl', meta_key) < meta_ttl then
  redis.call('pexpire', meta_key, meta_ttl)
end

redis.call('xadd', stream_key, 'MAXLEN', size, offset, 'd', ARGV[2])
redis.call('pexpire', stream_key, ARGV[4])
redis.call(ARGV[7], ARGV[1], 'p' .. offset .. ':' .. epoch .. ':' .. ARGV[2])
return {offset, epoch}
