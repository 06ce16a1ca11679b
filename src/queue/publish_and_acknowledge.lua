-- Publishes the event of each order that has one and appends it to the event stream, then
-- acknowledges the orders: drops them from the processing list and the pending hash, counts the
-- completions of this second, and marks the acknowledgement done. Runs once per acknowledgement
-- id: a retry after a lost reply does nothing.
--
-- The publishes come before any write: a script error is not rolled back, so a refused PUBLISH
-- (no channel permission) must find nothing written yet. Then the orders stay in the processing
-- list, unacknowledged and unmarked, and the retry does it all. The stream entry and the PUBLISH
-- of one event are in one script, so the channel and the stream never disagree.
--
-- KEYS: processing list, pending hash, this second's completion counter, the acknowledgement's
--       marker, the event stream.
-- ARGV: the stream's approximate length limit, then (payload, order id or "" to keep its pending
--       entry, channel, event or "", "1" when it counts as a completion or "") for each order.
--       A delivery that was taken over keeps the entry: it belongs to the delivery in flight,
--       and an order with no entry is one the repair puts back on the queue.
-- Reply: how many events it published, or -1 when this acknowledgement was done before.
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local published, completed, ids = 0, 0, {}
for i = 2, #ARGV, 5 do
  if ARGV[i + 3] ~= '' then redis.call('PUBLISH', ARGV[i + 2], ARGV[i + 3]) end
end
for i = 2, #ARGV, 5 do
  if ARGV[i + 3] ~= '' then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[i + 3])
    published = published + 1
  end
  if ARGV[i + 4] ~= '' then completed = completed + 1 end
  redis.call('LREM', KEYS[1], -1, ARGV[i])
  if ARGV[i + 1] ~= '' then ids[#ids + 1] = ARGV[i + 1] end
end
if #ids > 0 then redis.call('HDEL', KEYS[2], unpack(ids)) end
if completed > 0 then
  redis.call('INCRBY', KEYS[3], completed)
  redis.call('EXPIRE', KEYS[3], 660)
end
redis.call('SET', KEYS[4], 1, 'EX', 120)
return published
