#!lua
-- tidegate rate limiting: GCRA, one integer of state per source.
--
-- KEYS[1] = <prefix>r:{<source hash>}   string: the theoretical arrival time, in ms
-- ARGV    = now (ms), emission interval T (ms), tolerance tau (ms)
-- Reply   = {1, 0} allowed, or {0, retry after (ms)} limited; a limited request
--           changes nothing.

local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])

local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
  tat = now
end
if tat - now > tolerance then
  return {0, tat - now - tolerance}
end
local next = tat + interval
-- Once `next` has passed, the source has its whole burst back: the key is moot.
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', next - now + 1)
return {1, 0}
