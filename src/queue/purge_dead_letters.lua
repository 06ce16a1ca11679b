-- Deletes every dead letter (the orders stay failed in PostgreSQL).
--
-- KEYS: dead-letter entries hash, dead-letter index, the old dead-letter list.
-- Reply: how many there were.
local n = redis.call('HLEN', KEYS[1]) + redis.call('LLEN', KEYS[3])
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
return n
