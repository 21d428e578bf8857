-- grant.lua: what admit.lua and release.lua share, prepended to each of
-- them. Both scripts pass the current window's keys first:
--
-- KEYS[1]  counter        cm:{<tenant>}:quota:<window>              integer
-- KEYS[2]  granted mails  cm:{<tenant>}:quota:<window>:granted      set of mail ids
-- KEYS[3]  limit override cm:{<tenant>}:limit                       integer, optional
-- KEYS[4]  80 % marker    cm:{<tenant>}:quota:<window>:notified:80  mail id that crossed 80 %
-- KEYS[5]  100 % marker   cm:{<tenant>}:quota:<window>:notified:100 mail id that reached 100 %

-- read_limit returns the override when it is set, else file; nil when the
-- override is not a non-negative integer (the caller fails closed).
local function read_limit(file)
  local override = redis.call('GET', KEYS[3])
  if not override then
    return tonumber(file)
  end
  if not string.match(override, '^%d+$') then
    return nil
  end
  return tonumber(override)
end

local function bad_limit()
  return redis.error_reply('quota: ' .. KEYS[3] .. ' is not a non-negative integer')
end

local function read_used()
  return tonumber(redis.call('GET', KEYS[1]) or '0')
end

-- mine reports (1 or 0) whether the threshold marker key names mail.
local function mine(key, mail)
  if redis.call('GET', key) == mail then
    return 1
  end
  return 0
end

-- grant counts mail in the window and returns the new count and whether
-- this grant is the one that reached 80 % and 100 % of limit (1 or 0):
-- a marker is claimed by the first grant of the window that reaches it.
local function grant(mail, limit, ttl)
  local used = redis.call('INCR', KEYS[1])
  redis.call('SADD', KEYS[2], mail)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  local function cross(key, percent)
    if used * 100 >= limit * percent and redis.call('SET', key, mail, 'NX', 'EX', ttl) then
      return 1
    end
    return 0
  end
  return used, cross(KEYS[4], 80), cross(KEYS[5], 100)
end
