-- Moves every order held by a worker process whose heartbeat expired back to the pop end of the
-- queue, and unregisters that worker.
--
-- KEYS: workers set, queue.
-- ARGV: the key tag (`{prefix}:`).
-- Reply: how many orders it moved.
local moved = 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'heartbeat:' .. worker) == 0 then
    local held = ARGV[1] .. 'processing:' .. worker
    while redis.call('LMOVE', held, KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
    redis.call('SREM', KEYS[1], worker)
  end
end
return moved
