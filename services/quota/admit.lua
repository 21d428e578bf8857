-- admit.lua: give one mail a place in its tenant's quota window, or put it
-- at the end of the tenant's waiting line. Atomic (one script) and
-- idempotent by mail id. Every key shares the tenant's hash tag, so the
-- script is valid on Redis Cluster. grant.lua is prepended.
--
-- KEYS[1..5] the window's keys, see grant.lua
-- KEYS[6]  previous window's granted mails
-- KEYS[7]  previous window's counter
-- KEYS[8]  held line       cm:{<tenant>}:held        zset mail id -> arrival number
-- KEYS[9]  paced line      cm:{<tenant>}:paced       zset mail id -> due time (ms)
-- KEYS[10] releasing line  cm:{<tenant>}:releasing   zset mail id -> lease end (ms)
-- KEYS[11] stored mails    cm:{<tenant>}:stored      hash mail id -> HELD stream sequence ('' until stored)
-- KEYS[12] arrivals        cm:{<tenant>}:arrivals    integer, numbers the held line
-- ARGV[1]  mail id
-- ARGV[2]  limit from the tenants file (used when KEYS[3] is absent)
-- ARGV[3]  TTL of the window's keys, in seconds
--
-- Returns {state, used, limit, repeat, crossed80, reached100, previous,
-- stored, position, waiting}:
--   state       1 granted: publish it now; 2 held (in the held line);
--               3 paced; 4 releasing (both: granted, the scheduler has it)
--   repeat      the mail was known already; nothing changed
--   previous    it was granted in the previous window (a retry across
--               midnight), and used is that window's count
--   crossed80   this mail is the one whose grant reached 80 % of the limit
--   reached100  this mail is the one whose grant reached 100 % of the limit
--   stored      the mail's HELD stream sequence, '' when not stored yet
--   position    1-based place in the held line (state 2), else 0
--   waiting     length of the held line
-- A repeated grant reports the same crossings again, so a caller that
-- crashed before announcing them announces them on the retry.
--
-- Order: a mail is held, even when the window has room, while older mail
-- waits in the held line, so that the line is released in arrival order.

local mail = ARGV[1]
local ttl = ARGV[3]
local limit = read_limit(ARGV[2])
if not limit then
  return bad_limit()
end
local used = read_used()
local waiting = redis.call('ZCARD', KEYS[8])

local function in_line(state)
  local stored = redis.call('HGET', KEYS[11], mail) or ''
  local position = 0
  if state == 2 then
    position = redis.call('ZRANK', KEYS[8], mail) + 1
  end
  return {state, used, limit, 1, 0, 0, 0, stored, position, waiting}
end
if redis.call('ZSCORE', KEYS[8], mail) then
  return in_line(2)
end
if redis.call('ZSCORE', KEYS[9], mail) then
  return in_line(3)
end
if redis.call('ZSCORE', KEYS[10], mail) then
  return in_line(4)
end

if redis.call('SISMEMBER', KEYS[2], mail) == 1 then
  return {1, used, limit, 1, mine(KEYS[4], mail), mine(KEYS[5], mail), 0, '', 0, waiting}
end
if redis.call('SISMEMBER', KEYS[6], mail) == 1 then
  return {1, tonumber(redis.call('GET', KEYS[7]) or '0'), limit, 1, 0, 0, 1, '', 0, waiting}
end

if used < limit and waiting == 0 then
  local c80, c100
  used, c80, c100 = grant(mail, limit, ttl)
  return {1, used, limit, 0, c80, c100, 0, '', 0, 0}
end

redis.call('ZADD', KEYS[8], redis.call('INCR', KEYS[12]), mail)
redis.call('HSET', KEYS[11], mail, '')
return {2, used, limit, 0, 0, 0, 0, '', waiting + 1, waiting + 1}
