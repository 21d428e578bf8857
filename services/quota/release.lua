-- release.lua: take the next mails the scheduler may publish for one
-- tenant, in three steps, at most ARGV[5] mails in all:
--
--   1. releasing mails whose lease ended: a pass that took them did not
--      confirm their publication (it crashed, or Redis or NATS failed);
--   2. paced mails whose due time has come;
--   3. held mails, in arrival order, granted in the current window as far
--      as it has room, and no sooner than the release gate allows: each
--      batch of held mail closes the gate for ARGV[6] ms, which paces the
--      release (no thundering herd when a window opens).
--
-- Every mail taken moves to the releasing line with a lease of ARGV[7]
-- ms; done.lua removes it once it is published. Mails not stored in HELD
-- yet (stored = '') are left in their line for a later pass. grant.lua is
-- prepended.
--
-- KEYS[1..5] the window's keys, see grant.lua
-- KEYS[6]  held line      KEYS[7]  paced line    KEYS[8] releasing line
-- KEYS[9]  stored mails   KEYS[10] grants        cm:{<tenant>}:grants hash mail id -> grant
-- KEYS[11] release gate   cm:{<tenant>}:gate     time (ms) before which no held mail is released
-- ARGV[1]  now (ms)       ARGV[2]  window name   ARGV[3] limit from the tenants file
-- ARGV[4]  TTL of the window's keys (s)          ARGV[5] batch
-- ARGV[6]  gate interval (ms)                    ARGV[7] lease (ms)
--
-- A grant is "<window> <used> <limit> <flags>", flags being the sum of
-- 1 (reached 80 %), 2 (reached 100 %), 4 (was held), 8 (pacing done).
--
-- Returns {mails, held, paced, releasing, used, limit, next_paced,
-- next_lease, gate}: mails is a list of {mail id, stored, grant}; held,
-- paced and releasing are the lines' lengths; next_paced and next_lease
-- the first due time and lease end (-1 when the line is empty).

local now = tonumber(ARGV[1])
local window = ARGV[2]
local ttl = ARGV[4]
local batch = tonumber(ARGV[5])
local interval = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local limit = read_limit(ARGV[3])
if not limit then
  return bad_limit()
end

local mails = {}
local function take(id, stored)
  redis.call('ZADD', KEYS[8], now + lease, id)
  mails[#mails + 1] = {id, stored, redis.call('HGET', KEYS[10], id) or ''}
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[8], '-inf', now, 'LIMIT', 0, batch)) do
  take(id, redis.call('HGET', KEYS[9], id) or '')
end

if #mails < batch then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now, 'LIMIT', 0, batch - #mails)) do
    local stored = redis.call('HGET', KEYS[9], id) or ''
    if stored ~= '' then
      redis.call('ZREM', KEYS[7], id)
      take(id, stored)
    end
  end
end

local used = read_used()
local gate = tonumber(redis.call('GET', KEYS[11]) or '0')
if #mails < batch and now >= gate and used < limit then
  local want = math.min(limit - used, batch - #mails)
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', KEYS[6], 0, want + batch - 1)) do
    if n >= want then
      break
    end
    local stored = redis.call('HGET', KEYS[9], id) or ''
    if stored ~= '' then
      local c80, c100
      used, c80, c100 = grant(id, limit, ttl)
      redis.call('ZREM', KEYS[6], id)
      redis.call('HSET', KEYS[10], id, window .. ' ' .. used .. ' ' .. limit .. ' ' .. (4 + c80 + 2 * c100))
      take(id, stored)
      n = n + 1
    end
  end
  if n > 0 then
    gate = now + interval
    redis.call('SET', KEYS[11], string.format('%.0f', gate))
  end
end

local function first(key)
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if r[2] then
    return tonumber(r[2])
  end
  return -1
end
return {mails, redis.call('ZCARD', KEYS[6]), redis.call('ZCARD', KEYS[7]), redis.call('ZCARD', KEYS[8]),
  used, limit, first(KEYS[7]), first(KEYS[8]), gate}
