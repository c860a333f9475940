#!lua
-- tidegate dedup: one atomic sliding-window step for one fingerprint.
--
-- The `#!lua` shebang (no flags) makes Redis 7 treat the script as "may write",
-- so under `maxmemory` with noeviction the whole call is refused with OOM before it
-- runs: never a partial write. (That refuses resolutions under OOM too; the sender
-- retries them like everything else.)
--
-- An entry lives in the hash of the time bucket of its last sighting:
--   KEYS[1] = <prefix>d:{<shard>}:<b>     b = floor(now / window), the caller's bucket
--   KEYS[2] = <prefix>d:{<shard>}:<b-1>   where an entry seen in the last window may be
--   KEYS[3] = <prefix>d:{<shard>}:<b+1>   where a replica whose clock runs ahead put it
-- All three share the {shard} hash tag, so they sit in one Cluster slot.
-- ARGV[1] = field: 8 bytes of the fingerprint (the shard names 14 more bits)
-- ARGV[2] = now, whole seconds; ARGV[3] = window, seconds; ARGV[4] = "fire" | "resolve"
-- Value   = struct.pack('>I4I4I4', first_seen, last_seen, count): 12 bytes
-- Reply   = {verdict, first_seen, last_seen, count}
--           0 new, 1 duplicate, 2 resolved-open, 3 resolved-unknown

local field = ARGV[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local mode = ARGV[4]

local found, value
for i = 1, 3 do
  value = redis.call('HGET', KEYS[i], field)
  if value then
    found = i
    break
  end
end

local first, last, count
local live = false
if value then
  first, last, count = struct.unpack('>I4I4I4', value)
  live = (now - last) < window
end

if mode == 'resolve' then
  if live then
    return {2, first, last, count}
  end
  return {3, 0, 0, 0}
end

local verdict
if live then
  verdict = 1
  count = count + 1
  -- Never move last_seen backwards when replicas' clocks disagree.
  if now > last then
    last = now
  end
else
  verdict = 0
  first, last, count = now, now, 1
end

-- last >= now, so the entry belongs in the caller's bucket or the next one.
local bucket = math.floor(last / window)
local target = 1
if bucket > math.floor(now / window) then
  target = 3
end
redis.call('HSET', KEYS[target], field, struct.pack('>I4I4I4', first, last, count))
if found and found ~= target then
  redis.call('HDEL', KEYS[found], field)
end
-- The bucket's key outlives the last entry that can still be live in it.
redis.call('EXPIRE', KEYS[target], (bucket + 2) * window - now + 1)
return {verdict, first, last, count}
