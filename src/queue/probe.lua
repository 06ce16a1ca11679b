-- Whether this Redis connection can do what the service does: the ACL check of every command it
-- runs (with real key and channel names; `redis.acl_check_cmd` checks the command, its keys and
-- its channels without running it, also for commands a script may not run, such as SUBSCRIBE),
-- then one real write, which a replica refuses (READONLY). Redis before 7 has no ACL check: that
-- part is skipped. Sent with KEYS[1] under the `{prefix}` hash tag, so a cluster node that does
-- not own the slot answers MOVED.
--
-- With ARGV[1] > 0 (ORDERS_REDIS_MIN_REPLICAS), it also counts the replicas online.
--
-- KEYS: the probe key.
-- ARGV: replicas wanted (0: not counted), then the checks, each as its word count n then n words
--       (command and arguments); the first check must be the probe's own SET of KEYS[1].
-- Reply: {1 when the ACLs were checked (0: Redis < 7), replicas online (0 when not counted), then
--        the number (1-based) of each check refused}.
local refused, checked = {}, 0
if redis.acl_check_cmd then
  checked = 1
  local i, n = 2, 0
  while i <= #ARGV do
    local words = tonumber(ARGV[i])
    n = n + 1
    -- An unknown (renamed or disabled) command raises: as good as refused.
    local ok, allowed = pcall(redis.acl_check_cmd, unpack(ARGV, i + 1, i + words))
    if not (ok and allowed) then refused[#refused + 1] = n end
    i = i + words + 1
  end
end
-- A SET the ACL refuses would raise an error that names no permission: it is reported above.
if refused[1] ~= 1 then redis.call('SET', KEYS[1], '1', 'PX', 10000) end
local online = 0
if tonumber(ARGV[1]) > 0 then
  -- Refused INFO is among the refused checks; the count then stays 0.
  local ok, info = pcall(redis.call, 'INFO', 'replication')
  if ok then
    for _ in string.gmatch(info, 'slave%d+:[^\r\n]*state=online') do online = online + 1 end
  end
end
local reply = {checked, online}
for _, n in ipairs(refused) do reply[#reply + 1] = n end
return reply
