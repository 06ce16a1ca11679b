-- Puts a dead letter back on the queue (admin retry).
--
-- KEYS: dead list, pending hash, queue.
-- ARGV: the dead-letter entry as stored, order id, payload to enqueue.
-- Reply: 1, or 0 when the entry is gone.
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('LPUSH', KEYS[3], ARGV[3])
return 1
