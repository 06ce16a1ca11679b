-- Takes a queued order off the queue and the retry schedule (admin delete).
--
-- KEYS: pending hash, queue, scheduled set.
-- ARGV: order id.
-- Reply: 1 when it did, 2 when the order is accepted but held by a worker, 0 when it is not
--        pending at all.
local payload = redis.call('HGET', KEYS[1], ARGV[1])
if not payload then return 0 end
local removed = redis.call('LREM', KEYS[2], 0, payload) + redis.call('ZREM', KEYS[3], payload)
if removed == 0 then return 2 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
