-- Every registered worker process as the console shows it.
--
-- KEYS: workers set.
-- ARGV: the key tag (`{prefix}:`).
-- Reply: {now (Unix ms), then for each worker: id, what it last told (JSON or false), its
--        lease's time left (ms; negative: none), orders held, the oldest held payload or false}.
local t = redis.call('TIME')
local reply = {tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)}
for _, worker in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local processing = ARGV[1] .. 'processing:' .. worker
  reply[#reply + 1] = worker
  reply[#reply + 1] = redis.call('GET', ARGV[1] .. 'worker:' .. worker)
  reply[#reply + 1] = redis.call('PTTL', ARGV[1] .. 'heartbeat:' .. worker)
  reply[#reply + 1] = redis.call('LLEN', processing)
  reply[#reply + 1] = redis.call('LINDEX', processing, -1)
end
return reply
