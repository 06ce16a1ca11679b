-- Puts back on the queue the orders PostgreSQL holds as processing that Redis no longer holds:
-- the pending hash has every accepted, unacknowledged order (on the queue, in a processing list
-- or scheduled for a retry), so an order missing from it is nowhere. Checked and pushed in one
-- script, so two workers sweeping at once put each order back once.
--
-- KEYS: pending hash, queue.
-- ARGV: (order id, payload) pairs.
-- Reply: the ids of the orders it put back.
local repaired = {}
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    repaired[#repaired + 1] = ARGV[i]
  end
end
return repaired
