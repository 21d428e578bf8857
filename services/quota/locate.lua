-- locate.lua: record where a waiting mail is stored: its sequence in the
-- HELD stream. The first sequence recorded wins, so a mail stored twice
-- (a retry after the stream's duplicate window) keeps one copy; the
-- caller deletes the other.
--
-- KEYS[1] held line  KEYS[2] paced line  KEYS[3] stored mails
-- KEYS[4] counter    KEYS[5] limit override
-- ARGV[1] mail id    ARGV[2] HELD sequence  ARGV[3] now (ms)
-- ARGV[4] limit from the tenants file
--
-- Returns {stored, releasable}: the sequence recorded ('' when the mail
-- is in no line any more) and 1 when a scheduler pass could release it
-- now (the window has room, or its pacing slot has come).

local mail = ARGV[1]
local held = redis.call('ZSCORE', KEYS[1], mail)
local due = redis.call('ZSCORE', KEYS[2], mail)
if not held and not due then
  return {'', 0}
end
local stored = redis.call('HGET', KEYS[3], mail) or ''
if stored == '' then
  stored = ARGV[2]
  redis.call('HSET', KEYS[3], mail, stored)
end
local releasable = 0
if due and tonumber(due) <= tonumber(ARGV[3]) then
  releasable = 1
end
if held then
  local limit = redis.call('GET', KEYS[5]) or ARGV[4]
  if string.match(limit, '^%d+$') and tonumber(redis.call('GET', KEYS[4]) or '0') < tonumber(limit) then
    releasable = 1
  end
end
return {stored, releasable}
