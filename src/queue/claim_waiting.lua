-- Claims up to ARGV[1] waiting orders without blocking, as that many
-- `LMOVE queue processing RIGHT LEFT` would, in three commands; none while an operator has
-- paused claiming.
--
-- KEYS: queue, processing list, paused marker.
-- ARGV: the most orders to claim.
-- Reply: the payloads claimed, oldest first (the order those moves would have taken them in), or
--        0 when claiming is paused.
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local want = tonumber(ARGV[1])
if want < 1 then return {} end
local oldest_last = redis.call('LRANGE', KEYS[1], -want, -1)
local n = #oldest_last
if n == 0 then return oldest_last end
redis.call('LTRIM', KEYS[1], 0, -n - 1)
local claimed = {}
for i = n, 1, -1 do claimed[#claimed + 1] = oldest_last[i] end
redis.call('LPUSH', KEYS[2], unpack(claimed))
return claimed
