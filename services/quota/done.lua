-- done.lua: forget mails whose publication on mail.ready is confirmed.
-- Only mails still in the releasing line are forgotten, so a late call
-- never removes a mail that another pass has put back in a line.
--
-- KEYS[1] releasing line  KEYS[2] stored mails  KEYS[3] grants
-- ARGV    mail ids
--
-- Returns how many mails were forgotten.

local n = 0
for _, mail in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], mail) == 1 then
    redis.call('HDEL', KEYS[2], mail)
    redis.call('HDEL', KEYS[3], mail)
    n = n + 1
  end
end
return n
