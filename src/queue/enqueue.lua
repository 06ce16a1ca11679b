-- Accepts the orders of several requests at once, each request all or none: refused when the
-- queue would grow past its max depth, or answered with the record of the earlier request that
-- used its idempotency key.
--
-- KEYS: queue, pending hash, then the idempotency key of each request that has one.
-- ARGV: the keys' TTL in seconds, the max depth (0: none), then for each request its number of
--       orders n (at least 1), or -n followed by the index of its idempotency key in KEYS and the
--       record to keep under it; then its n (order id, payload) pairs. (One argument per plain
--       request and a flat reply: turning arguments and tables into Lua values is most of the
--       script's cost.)
-- Reply: {one letter per request: "o" accepted, "f" full, "s" seen; then the record of each "s"}.
local depth = redis.call('LLEN', KEYS[1])
local max = tonumber(ARGV[2])
local status, out, fields, payloads = {}, {''}, {}, {}
local i = 3
while i <= #ARGV do
  local n, key, record = tonumber(ARGV[i]), 0, nil
  if n < 0 then
    n, key, record = -n, tonumber(ARGV[i + 1]), ARGV[i + 2]
    i = i + 3
  else
    i = i + 1
  end
  local first = i
  i = first + 2 * n
  local seen = key > 0 and redis.call('GET', KEYS[key])
  if seen then
    status[#status + 1] = 's'
    out[#out + 1] = seen
  elseif max > 0 and depth + n > max then
    status[#status + 1] = 'f'
  else
    if key > 0 then redis.call('SET', KEYS[key], record, 'EX', ARGV[1]) end
    for j = first, i - 1, 2 do
      fields[#fields + 1] = ARGV[j]
      fields[#fields + 1] = ARGV[j + 1]
      payloads[#payloads + 1] = ARGV[j + 1]
    end
    depth = depth + n
    status[#status + 1] = 'o'
  end
end
if #payloads > 0 then
  redis.call('HSET', KEYS[2], unpack(fields))
  redis.call('LPUSH', KEYS[1], unpack(payloads))
end
out[1] = table.concat(status)
return out
