-- The queue's state for /stats and /metrics, read atomically.
--
-- KEYS: workers set, queue, scheduled set, dead-letter entries hash, paused marker.
-- ARGV: the key tag (`{prefix}:`).
-- Reply: {queue depth, in flight, scheduled, dead letters, live workers, completions in the last
--        minute, when claiming was paused (Unix ms; 0: it is not)}.
local live, in_flight = 0, 0
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'heartbeat:' .. worker) == 1 then live = live + 1 end
  in_flight = in_flight + redis.call('LLEN', ARGV[1] .. 'processing:' .. worker)
end
local now = tonumber(redis.call('TIME')[1])
local last_minute = 0
for second = now - 59, now do
  last_minute = last_minute + (tonumber(redis.call('GET', ARGV[1] .. 'completed:' .. second)) or 0)
end
return {redis.call('LLEN', KEYS[2]), in_flight, redis.call('ZCARD', KEYS[3]),
        redis.call('HLEN', KEYS[4]), live, last_minute,
        tonumber(redis.call('GET', KEYS[5])) or 0}
