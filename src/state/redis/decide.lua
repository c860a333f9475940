#!lua
-- tidegate's decision for one signal, atomically: dedup, then storm detection.
-- The same rule as the embedded store, and the same conformance suite.
--
-- The `#!lua` shebang (no flags) makes Redis 7 treat the script as "may write", so
-- under `maxmemory` with noeviction the whole call is refused with OOM before it
-- runs: never a partial write.
--
-- Dedup. An open incident lives in the hash of the time bucket of its last sighting:
--   KEYS[1..3] = <prefix>d:{<tag>}:<b>, :<b-1>, :<b+1>   b = floor(now / window)
-- (b-1 holds entries seen within the last window; b+1 those written by a replica
-- whose clock runs slightly ahead.) Field: bytes of the fingerprint; value:
-- struct '>I4I4I4' = first_seen, last_seen, count (12 bytes).
--
-- Storms, for signals of a (namespace, alert name) scope; absent otherwise:
--   KEYS[4] = <prefix>s:{<scope>}:r:<rate bucket>     alerts in this rate window
--   KEYS[5] = <prefix>s:{<scope>}:p:<pattern bucket>  HyperLogLog: resources in this pattern window
--   KEYS[6] = <prefix>s:{<scope>}:w                   hash: aggregation window (id, kind, last, alerts)
--   KEYS[7] = <prefix>s:{<scope>}:wr                  HyperLogLog: resources folded into it
-- On Cluster all seven keys share the scope's hash tag (one slot); elsewhere the
-- dedup tag is a fingerprint shard, which packs fingerprints densely.
--
-- ARGV = field, now (s), window (s), mode ("fire" | "resolve" | "adopt"),
--        then for fire with storm keys: resource, rate threshold, rate window,
--        pattern threshold, pattern window, inactivity, max duration;
--        for adopt: first_seen, count (the incident an authority says is open)
-- Reply = {0 new | 1 duplicate | 2 resolved-open | 3 resolved-unknown, first, last, count}
--       | {5, window id, kind (1 rate, 2 pattern), alerts, resources, first folded (0|1)}

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

local function store(verdict)
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
  -- The bucket's key outlives the last entry that can still be live in it. Every
  -- writer of a bucket sets the same absolute expiry, so a key that already held
  -- this entry already has it.
  if found ~= target then
    redis.call('EXPIRE', KEYS[target], (bucket + 2) * window - now + 1)
  end
  return {verdict, first, last, count}
end

if mode == 'adopt' then
  first, last, count = tonumber(ARGV[5]), now, tonumber(ARGV[6])
  return store(1)
end

-- Storm detection counts every firing alert; it folds only alerts that are not a
-- repeat of an open incident (those stay counted on their own request).
local function storm(tracked)
  local resource = ARGV[5]
  local rate_threshold, rate_window = tonumber(ARGV[6]), tonumber(ARGV[7])
  local pattern_threshold, pattern_window = tonumber(ARGV[8]), tonumber(ARGV[9])
  local inactivity, max_duration = tonumber(ARGV[10]), tonumber(ARGV[11])

  -- Window counters expire at their window's end: set once, when created.
  local rate = redis.call('INCR', KEYS[4])
  if rate == 1 then
    redis.call('EXPIRE', KEYS[4], (math.floor(now / rate_window) + 1) * rate_window - now + 1)
  end
  if redis.call('PFADD', KEYS[5], resource) == 1 then
    redis.call('EXPIRE', KEYS[5], (math.floor(now / pattern_window) + 1) * pattern_window - now + 1)
  end

  local id, kind
  local w = redis.call('HMGET', KEYS[6], 'id', 'kind', 'last')
  if w[1] and now - tonumber(w[3]) < inactivity and now - tonumber(w[1]) < max_duration then
    id, kind = tonumber(w[1]), tonumber(w[2])
    if now > tonumber(w[3]) then
      redis.call('HSET', KEYS[6], 'last', now)
    end
  else
    if redis.call('PFCOUNT', KEYS[5]) > pattern_threshold then
      kind = 2
    elseif rate > rate_threshold then
      kind = 1
    else
      return nil
    end
    id = now
    redis.call('DEL', KEYS[6], KEYS[7])
    redis.call('HSET', KEYS[6], 'id', id, 'kind', kind, 'last', now, 'alerts', 0)
  end
  -- The window lives until inactivity or its maximum duration, whichever is first.
  local ttl = math.min(now + inactivity, id + max_duration) - now + 1
  redis.call('EXPIRE', KEYS[6], ttl)
  if tracked then
    return nil
  end
  local alerts = redis.call('HINCRBY', KEYS[6], 'alerts', 1)
  redis.call('PFADD', KEYS[7], resource)
  redis.call('EXPIRE', KEYS[7], ttl)
  local opened = 0
  if alerts == 1 then
    opened = 1
  end
  return {5, id, kind, alerts, redis.call('PFCOUNT', KEYS[7]), opened}
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
if #KEYS == 7 then
  local folded = storm(live)
  if folded then
    return folded
  end
end
return store(verdict)
