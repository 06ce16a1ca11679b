-- Publishes the event of each order that has one, then acknowledges the orders: drops them from
-- the processing list and the pending hash, counts the completions of this second, and marks the
-- acknowledgement done. Runs once per acknowledgement id: a retry after a lost reply does nothing.
--
-- The publishes come before any write, and all go to one channel: a script error is not rolled
-- back, so a refused PUBLISH (no channel permission) must find nothing written yet. Then the
-- orders stay in the processing list, unacknowledged and unmarked, and the retry does it all.
--
-- KEYS: processing list, pending hash, this second's completion counter, the acknowledgement's
--       marker.
-- ARGV: channel, then (payload, order id or "" to keep its pending entry, event or "") for each
--       order. A delivery that was taken over keeps the entry: it belongs to the delivery in
--       flight, and an order with no entry is one the repair puts back on the queue.
-- Reply: how many events it published, or -1 when this acknowledgement was done before.
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local published, ids = 0, {}
for i = 2, #ARGV, 3 do
  if ARGV[i + 2] ~= '' then
    redis.call('PUBLISH', ARGV[1], ARGV[i + 2])
    published = published + 1
  end
end
for i = 2, #ARGV, 3 do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
  if ARGV[i + 1] ~= '' then ids[#ids + 1] = ARGV[i + 1] end
end
if #ids > 0 then redis.call('HDEL', KEYS[2], unpack(ids)) end
if published > 0 then
  redis.call('INCRBY', KEYS[3], published)
  redis.call('EXPIRE', KEYS[3], 660)
end
redis.call('SET', KEYS[4], 1, 'EX', 120)
return published
