-- Publishes one event with no queue change (a cancellation from the API) and appends it to the
-- event stream, in one script, so the channel and the stream never disagree.
--
-- KEYS: the event stream.
-- ARGV: channel, event, the stream's approximate length limit.
-- Reply: 1.
redis.call('PUBLISH', ARGV[1], ARGV[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[2])
return 1
