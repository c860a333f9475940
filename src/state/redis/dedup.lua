#!lua
-- tidegate dedup state: one atomic sliding-window step for one fingerprint.
--
-- Shebang without flags => Redis 7 treats the script as "may write, deny-oom":
-- under maxmemory/noeviction OOM the whole EVAL/EVALSHA is refused before it
-- runs (no partial writes). Note: this also refuses mode=resolve under OOM.
--
-- KEYS[1] = current bucket key  <prefix>d:{<shard>}:<bucket>
-- KEYS[2] = previous bucket key <prefix>d:{<shard>}:<bucket-1>
-- ARGV[1] = field: 8 raw bytes fp[2..10]
-- ARGV[2] = now_s (integer seconds)
-- ARGV[3] = window_s (integer seconds, > 0)
-- ARGV[4] = "fire" | "resolve"
-- Value   = struct.pack('>I4I4I4', first_seen_s, last_seen_s, count) (12 bytes)
-- Reply   = {status, first_seen, last_seen, count}
--   0 new (fire)  1 duplicate (fire)  2 live (resolve)  3 not live (resolve)

local field = ARGV[1]
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local mode = ARGV[4]
if not now or not window or window <= 0 then
  return redis.error_reply('ERR tidegate dedup: bad now/window')
end
if mode ~= 'fire' and mode ~= 'resolve' then
  return redis.error_reply('ERR tidegate dedup: bad mode')
end

local in_prev = false
local v = redis.call('HGET', KEYS[1], field)
if not v then
  v = redis.call('HGET', KEYS[2], field)
  in_prev = v and true or false
end

local first, last, count
local live = false
if v then
  first, last, count = struct.unpack('>I4I4I4', v)
  live = (now - last) < window
end

if mode == 'resolve' then
  if live then return {2, first, last, count} end
  return {3, 0, 0, 0}
end

local status
if live then
  status = 1
  count = count + 1
else
  status = 0
  first = now
  count = 1
end
redis.call('HSET', KEYS[1], field, struct.pack('>I4I4I4', first, now, count))
if in_prev then
  redis.call('HDEL', KEYS[2], field)
end
local bucket = math.floor(now / window)
redis.call('EXPIRE', KEYS[1], (bucket + 2) * window - now + 1)
return {status, first, now, count}
