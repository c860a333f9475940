-- tidegate rate limiting: GCRA, one integer of state per source. This file only
-- defines `gcra`; the rate-limit script and `decide.lua` both start with it, so
-- there is one definition of the rule.
--
-- key       = <prefix>r:{<source hash>}   string: the theoretical arrival time, in ms
-- now (ms), emission interval T (ms), tolerance tau (ms)
-- Returns 1, 0 when allowed, or 0, retry after (ms) when limited; a limited request
-- changes nothing.
local function gcra(key, now, interval, tolerance)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then
    tat = now
  end
  if tat - now > tolerance then
    return 0, tat - now - tolerance
  end
  local next = tat + interval
  -- Once `next` has passed, the source has its whole burst back: the key is moot.
  -- Numbers as '%d' strings: Redis spells a Lua number with '%.17g', which costs
  -- more than the command.
  redis.call('SET', key, string.format('%d', next), 'PX', string.format('%d', next - now + 1))
  return 1, 0
end
