-- Puts what one worker process still holds back at the pop end of the queue, and removes its
-- registration, lease and console entry (graceful shutdown).
--
-- KEYS: its processing list, queue, workers set, its heartbeat, its console entry.
-- ARGV: worker id.
-- Reply: how many orders it moved.
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
return moved
