-- The dead letters from a position in the index, newest first, with their entries.
--
-- KEYS: dead-letter index, dead-letter entries hash.
-- ARGV: start (`+` for the newest, or `(<index key>` to start after that one), how many.
-- Reply: {index key, entry, index key, entry, ...}; "" for an entry that is gone.
local keys = redis.call('ZRANGE', KEYS[1], ARGV[1], '-', 'BYLEX', 'REV', 'LIMIT', 0, ARGV[2])
local reply = {}
for _, key in ipairs(keys) do
  reply[#reply + 1] = key
  reply[#reply + 1] = redis.call('HGET', KEYS[2], string.match(key, ':(.*)$')) or ''
end
return reply
