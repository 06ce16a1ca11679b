-- Deletes one dead letter (the order stays failed in PostgreSQL).
--
-- KEYS: dead-letter entries hash, dead-letter index.
-- ARGV: dead-letter id.
-- Reply: 1, or 0 when there is no such dead letter.
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], cjson.decode(entry)['key'])
return 1
