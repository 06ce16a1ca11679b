-- Moves the given orders from a processing list to the pop end of the queue, one list entry
-- each, skipping those no longer in the list (the put-back after a claim whose reply was lost).
--
-- KEYS: processing list, queue.
-- ARGV: the payloads.
-- Reply: how many it moved.
local moved = 0
for _, payload in ipairs(ARGV) do
  if redis.call('LREM', KEYS[1], 1, payload) > 0 then
    redis.call('RPUSH', KEYS[2], payload)
    moved = moved + 1
  end
end
return moved
