-- Moves retries that are due from the schedule to the pop end of the queue.
--
-- KEYS: scheduled set, queue.
-- ARGV: now (Unix ms), the most to move.
-- Reply: how many it moved.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, payload in ipairs(due) do
  redis.call('ZREM', KEYS[1], payload)
  redis.call('RPUSH', KEYS[2], payload)
end
return #due
