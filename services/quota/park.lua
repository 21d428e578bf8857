-- park.lua: put a granted mail in the paced line until its pacing slot.
-- It comes from the releasing line (the scheduler released it from the
-- held line) or from nowhere (the stage granted it directly). Idempotent
-- by mail id: a mail already in the paced line keeps its due time.
--
-- KEYS[1] paced line  KEYS[2] releasing line  KEYS[3] stored mails  KEYS[4] grants
-- ARGV[1] mail id     ARGV[2] due (ms)        ARGV[3] grant (see release.lua)
--
-- Returns the mail's HELD sequence, '' when it is not stored yet.

local mail = ARGV[1]
if not redis.call('ZSCORE', KEYS[1], mail) then
  redis.call('ZREM', KEYS[2], mail)
  redis.call('ZADD', KEYS[1], ARGV[2], mail)
  redis.call('HSET', KEYS[4], mail, ARGV[3])
  if redis.call('HEXISTS', KEYS[3], mail) == 0 then
    redis.call('HSET', KEYS[3], mail, '')
  end
end
return redis.call('HGET', KEYS[3], mail) or ''
