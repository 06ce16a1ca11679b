-- Moves dead letters from the list of earlier versions into the entries hash and the index,
-- each only if it is still in the list (several processes may start at once).
--
-- KEYS: the old dead-letter list, dead-letter entries hash, dead-letter index.
-- ARGV: for each: the entry as listed, dead-letter id, new entry, index key.
-- Reply: how many it moved.
local moved = 0
for i = 1, #ARGV, 4 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
    redis.call('ZADD', KEYS[3], 0, ARGV[i + 3])
    moved = moved + 1
  end
end
return moved
