-- Puts dead letters back on the queue (admin retry), each only if it is still there.
--
-- KEYS: dead-letter entries hash, dead-letter index, pending hash, queue.
-- ARGV: for each: dead-letter id, its index key, order id, payload to enqueue.
-- Reply: the ids revived.
local revived = {}
for i = 1, #ARGV, 4 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZREM', KEYS[2], ARGV[i + 1])
    redis.call('HSET', KEYS[3], ARGV[i + 2], ARGV[i + 3])
    redis.call('LPUSH', KEYS[4], ARGV[i + 3])
    revived[#revived + 1] = ARGV[i]
  end
end
return revived
