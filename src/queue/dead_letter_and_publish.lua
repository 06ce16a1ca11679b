-- Moves an order from a processing list to the dead letters, and publishes its failure event (if
-- any) and appends it to the event stream. The publish comes first: a refused PUBLISH (no channel
-- permission) raises before anything is written, so the order stays in the processing list and
-- the retry does it all. (A MULTI pipeline would not do: Redis checks ACLs again at EXEC and runs
-- the other commands of the transaction when one was refused in between.) A dead letter of the
-- same id already there (a second delivery of one order) is replaced, index entry and all.
--
-- KEYS: processing list, dead-letter entries hash, dead-letter index, pending hash, this
--       second's dead-letter counter, the event stream.
-- ARGV: failed channel, event or "", dead-letter id, entry (JSON with its index `key`), index
--       key, payload, order id or "", the stream's approximate length limit.
-- Reply: 1.
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[1], ARGV[2])
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'event', ARGV[2])
end
local old = redis.call('HGET', KEYS[2], ARGV[3])
if old then redis.call('ZREM', KEYS[3], cjson.decode(old)['key']) end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], 0, ARGV[5])
redis.call('LREM', KEYS[1], -1, ARGV[6])
if ARGV[7] ~= '' then redis.call('HDEL', KEYS[4], ARGV[7]) end
redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], 660)
return 1
