-- admit.lua: give one mail a place in its tenant's quota window, or refuse
-- it. Atomic (one script) and idempotent by mail id. Every key shares the
-- tenant's hash tag, so the script is valid on Redis Cluster.
--
-- KEYS[1]  counter       cm:{<tenant>}:quota:<window>              integer
-- KEYS[2]  granted mails cm:{<tenant>}:quota:<window>:granted      set of mail ids
-- KEYS[3]  limit override cm:{<tenant>}:limit                      integer, optional
-- KEYS[4]  80 % marker   cm:{<tenant>}:quota:<window>:notified:80  mail id that crossed 80 %
-- KEYS[5]  100 % marker  cm:{<tenant>}:quota:<window>:notified:100 mail id that reached 100 %
-- KEYS[6]  previous window's granted mails
-- KEYS[7]  previous window's counter
-- ARGV[1]  mail id
-- ARGV[2]  limit from the tenants file (used when KEYS[3] is absent)
-- ARGV[3]  TTL of the window's keys, in seconds
--
-- Returns {allowed, used, limit, repeat, crossed80, reached100, previous},
-- all integers (0 or 1 for the flags):
--   repeat      the mail was already granted; nothing counted
--   previous    it was granted in the previous window (a retry across
--               midnight), and used is that window's count
--   crossed80   this mail is the one whose grant reached 80 % of the limit
--   reached100  this mail is the one whose grant reached 100 % of the limit
-- A repeated grant reports the same crossings again, so a caller that
-- crashed before announcing them announces them on the retry.

local mail = ARGV[1]
local ttl = ARGV[3]

local limit = tonumber(ARGV[2])
local override = redis.call('GET', KEYS[3])
if override then
  if not string.match(override, '^%d+$') then
    return redis.error_reply('quota: ' .. KEYS[3] .. ' is not a non-negative integer')
  end
  limit = tonumber(override)
end

local used = tonumber(redis.call('GET', KEYS[1]) or '0')

-- mine reports whether marker key names this mail.
local function mine(key)
  if redis.call('GET', key) == mail then
    return 1
  end
  return 0
end

if redis.call('SISMEMBER', KEYS[2], mail) == 1 then
  return {1, used, limit, 1, mine(KEYS[4]), mine(KEYS[5]), 0}
end
if redis.call('SISMEMBER', KEYS[6], mail) == 1 then
  return {1, tonumber(redis.call('GET', KEYS[7]) or '0'), limit, 1, 0, 0, 1}
end

if used >= limit then
  return {0, used, limit, 0, 0, 0, 0}
end

used = redis.call('INCR', KEYS[1])
redis.call('SADD', KEYS[2], mail)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)

-- cross claims the marker for percent when this grant reached it and no
-- earlier grant of the window did.
local function cross(key, percent)
  if used * 100 >= limit * percent and redis.call('SET', key, mail, 'NX', 'EX', ttl) then
    return 1
  end
  return 0
end

return {1, used, limit, 0, cross(KEYS[4], 80), cross(KEYS[5], 100), 0}
