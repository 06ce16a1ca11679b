-- Moves every order held by a worker process whose heartbeat expired back to the pop end of the
-- queue, and unregisters that worker. A worker registered after the caller read the set waits
-- for the next call; one unregistered since is skipped.
--
-- KEYS: workers set, queue, then (heartbeat, processing list) of each worker in ARGV, in order.
-- ARGV: the worker ids.
-- Reply: how many orders it moved.
local moved = 0
for i, worker in ipairs(ARGV) do
  local heartbeat, held = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  if redis.call('SISMEMBER', KEYS[1], worker) == 1 and redis.call('EXISTS', heartbeat) == 0 then
    while redis.call('LMOVE', held, KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
    redis.call('SREM', KEYS[1], worker)
  end
end
return moved
