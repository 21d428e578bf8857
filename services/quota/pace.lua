-- pace.lua: reserve the next sending slot of one pacing rule, GCRA
-- (generic cell rate algorithm) in its "virtual scheduling" form, where
-- every call is accepted and told how long to wait. The key holds the
-- theoretical arrival time (TAT) of the next mail, in microseconds.
--
-- KEYS[1] the rule's key, cm:{<tenant>}:pace:<domain> or cm:{pace:<domain>}
-- ARGV[1] now (µs)  ARGV[2] emission interval T (µs)
-- ARGV[3] tolerance tau = (burst - 1) * T (µs)
--
-- Returns the wait in µs: 0 when the mail may go now. The slot is taken
-- either way, so n mails reserved at once leave T apart after the burst.

local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local at = tat - tau
if at < now then
  at = now
end
local next = tat + t
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now + tau) / 1000) + 1000)
return at - now
