-- Completions and dead letters per second over the last seconds, for the console's chart.
--
-- KEYS: the queue (not read: it sends the call to the node of the prefix's slot).
-- ARGV: the key tag (`{prefix}:`), how many seconds.
-- Reply: {the last second (Unix), completions per second oldest first, dead letters likewise}.
local now = tonumber(redis.call('TIME')[1])
local n = tonumber(ARGV[2])
local completed, failed = {}, {}
for i = 1, n do
  local second = now - n + i
  completed[i] = ARGV[1] .. 'completed:' .. second
  failed[i] = ARGV[1] .. 'failed:' .. second
end
local c, f = redis.call('MGET', unpack(completed)), redis.call('MGET', unpack(failed))
for i = 1, n do
  c[i] = tonumber(c[i]) or 0
  f[i] = tonumber(f[i]) or 0
end
return {now, c, f}
