-- Moves one scheduled retry to the pop end of the queue now (admin "retry now").
--
-- KEYS: pending hash, scheduled set, queue.
-- ARGV: order id.
-- Reply: 1, or 0 when the order is not waiting for a retry.
local payload = redis.call('HGET', KEYS[1], ARGV[1])
if not payload or not redis.call('ZSCORE', KEYS[2], payload) then return 0 end
redis.call('ZREM', KEYS[2], payload)
redis.call('RPUSH', KEYS[3], payload)
return 1
