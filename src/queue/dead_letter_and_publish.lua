-- Moves an order from a processing list to the dead letters and publishes its failure event,
-- if any. The publish comes first: a refused PUBLISH (no channel permission) raises before
-- anything is written, so the order stays in the processing list and the retry does it all. (A
-- MULTI pipeline would not do: Redis checks ACLs again at EXEC and runs the other commands of
-- the transaction when one was refused in between.)
--
-- KEYS: processing list, dead list, pending hash.
-- ARGV: failed channel, event or "", dead-letter entry, payload, order id or "".
-- Reply: 1.
if ARGV[2] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LREM', KEYS[1], -1, ARGV[4])
if ARGV[5] ~= '' then redis.call('HDEL', KEYS[3], ARGV[5]) end
return 1
