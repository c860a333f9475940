-- tidegate's decision for a batch of signals, atomically and in order: first the
-- request's rate-limit charge, if it has one, then for each signal dedup and storm
-- detection. The same rules as the embedded store, and the same conformance suite.
-- The script runs after `gcra.lua` (see `scripts` in mod.rs).
--
-- Keys are passed once each, however many signals of the batch use them; a signal
-- names its keys by index into KEYS.
--
-- Dedup. An open incident lives in the hash of the time bucket of its last sighting:
--   KEYS[d], KEYS[d+1], KEYS[d+2] = <prefix>d:{<tag>}:<b>, :<b-1>, :<b+1>
--   b = floor(now / window)
-- (b-1 holds entries seen within the last window; b+1 those written by a replica
-- whose clock runs slightly ahead.) Field: bytes of the fingerprint; value:
-- struct '>I4I4I4' = first_seen, last_seen, count (12 bytes).
--
-- Storms, for firing signals of a (namespace, alert name) scope:
--   KEYS[s]   = <prefix>s:{<scope>}:r:<rate bucket>     alerts in this rate window
--   KEYS[s+1] = <prefix>s:{<scope>}:p:<pattern bucket>  HyperLogLog: resources in this pattern window
--   KEYS[s+2] = <prefix>s:{<scope>}:w                   hash: aggregation window (id, kind, last, alerts)
--   KEYS[s+3] = <prefix>s:{<scope>}:wr                  HyperLogLog: resources folded into it
-- On Cluster a call carries the signals of one scope, and all their keys share the
-- scope's hash tag (one slot); elsewhere the dedup tag is a fingerprint shard, which
-- packs fingerprints densely, and one call carries a whole webhook.
--
-- Rate limiting, when the request is charged here: KEYS[1] = the source's budget key
-- (see gcra.lua), and ARGV[9..11] = now (ms), emission interval, tolerance; all three
-- empty otherwise.
--
-- Flapping (firing -> resolved -> firing), for incidents that resolved within the
-- flap window only: <prefix>f:{<tag>}:<field hex>, a string: one byte (1: the last
-- signal was a resolution), then the seconds of at most `keep` transitions within
-- the window, big-endian u32s. It expires a flap window after its last write. A
-- resolution sets the byte and, on a live entry, bit 31 of the entry's count, so
-- that a repeat reads the flap key only when one is due; a firing signal that opens
-- an incident always reads it. The key shares its dedup keys' hash tag (one slot),
-- and the script derives its name from theirs rather than taking it in KEYS: only
-- resolutions and re-fires touch it, and naming it for every signal would lengthen
-- every call.
--
-- ARGV[1..8] = now (s), window (s), rate threshold, rate window, pattern threshold,
--              pattern window, inactivity, max duration
-- ARGV[12..13] = flap window (s), flap keep
-- then from ARGV[14], one per signal, packed (a webhook's call would otherwise carry
-- hundreds of arguments, each one a string for Redis to parse and Lua to intern):
--   struct '>BI4I4I4I4c8' = mode (0 fire | 1 resolve | 2 adopt | 3 adopt a rate
--   window | 4 adopt a pattern window | 5 acknowledge), d, s (0: no storm keys), for adopt
--   first_seen and count (the incident an authority says is open), for a window
--   its id and alert count (0 otherwise), resource (8 bytes; zeros without storm
--   keys); then the field.
-- Reply: one string: 8 bytes of admission, two big-endian u32s (1, 0) allowed or
-- (0, retry after in ms) limited, in which case nothing else was done and nothing
-- follows; then 24 bytes per signal in order: six big-endian u32s,
--   0 new | 1 duplicate | 2 resolved-open | 3 resolved-unknown | 6 acknowledged-open
--   | 7 acknowledged-unknown, first, last, count, flap transitions (0: not a
--   re-fire), 0
-- | 5, window id, kind (1 rate, 2 pattern), alerts, resources, first folded (0|1)
-- (one string rather than nested arrays: the client decodes it without allocating)

local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local rate_threshold, rate_window = tonumber(ARGV[3]), tonumber(ARGV[4])
local pattern_threshold, pattern_window = tonumber(ARGV[5]), tonumber(ARGV[6])
local inactivity, max_duration = tonumber(ARGV[7]), tonumber(ARGV[8])
local now_bucket = math.floor(now / window)

local flap_window, flap_keep = tonumber(ARGV[12]), tonumber(ARGV[13])

-- Where the signals' arguments start.
local FIRST = 14

-- Bit 31 of an entry's stored count: a resolution came after its last firing.
local RESOLVED_BIT = 2147483648

if ARGV[9] ~= '' then
  local allowed, retry = gcra(KEYS[1], tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]))
  if allowed == 0 then
    return struct.pack('>I4I4', 0, retry)
  end
end

-- Firing alerts per storm scope in this call, so that each scope's rate counter
-- takes one INCRBY for the whole call.
local firing = {}
local FIRE, RESOLVE, ADOPT, ADOPT_WINDOW, ACKNOWLEDGE = 0, 1, 2, 3, 5
local RECORD = '>BI4I4I4I4c8'
local RECORD_BYTES = 25

for i = FIRST, #ARGV do
  local mode, _, s = struct.unpack('>BI4I4', ARGV[i])
  if mode == FIRE and s > 0 then
    firing[s] = (firing[s] or 0) + 1
  end
end

-- What this call knows of each storm scope. Redis' per-command cost inside a script
-- dwarfs the work of these commands, so a scope is read once per call, and writes
-- that later alerts of the call would overwrite go to Redis once, at the end. The
-- script is atomic: nobody can tell the difference.
local scopes = {}
local function scope_state(s)
  local state = scopes[s]
  if not state then
    local w = redis.call('HMGET', KEYS[s + 2], 'id', 'kind', 'last', 'alerts')
    state = { id = tonumber(w[1]), kind = tonumber(w[2]), last = tonumber(w[3]), alerts = tonumber(w[4]) }
    -- Whoever moved `last` to this second also set the window's expiry from it.
    state.ttl_set = state.last == now
    local rate = redis.call('INCRBY', KEYS[s], firing[s])
    if rate == firing[s] then
      -- Window counters expire at their window's end: set once, when created.
      redis.call('EXPIRE', KEYS[s], (math.floor(now / rate_window) + 1) * rate_window - now + 1)
    end
    state.rate = rate - firing[s]
    state.deferred = {}
    scopes[s] = state
  end
  return state
end

-- Distinct resources of the pattern window, or of the aggregation window when
-- `folded`: counted again only after an add changed the HyperLogLog.
local function resources(state, s, folded)
  local slot = folded and 'folded' or 'pattern'
  if not state[slot] then
    state[slot] = redis.call('PFCOUNT', KEYS[s + (folded and 3 or 1)])
  end
  return state[slot]
end

local function pattern_added(s, changed)
  if changed == 1 then
    redis.call('EXPIRE', KEYS[s + 1], (math.floor(now / pattern_window) + 1) * pattern_window - now + 1)
  end
end

-- Storm detection counts every firing alert; it folds only alerts that are not a
-- repeat of an open incident (those stay counted on their own request).
local function storm(s, resource, tracked)
  local state = scope_state(s)
  state.rate = state.rate + 1
  local open = state.id and now - state.last < inactivity and now - state.id < max_duration
  if open then
    -- An open window stays open for the rest of the call (`now` is fixed), so no
    -- later alert of the call needs the pattern count: add its resource at the end.
    state.deferred[#state.deferred + 1] = resource
  else
    local changed = redis.call('PFADD', KEYS[s + 1], resource)
    pattern_added(s, changed)
    if changed == 1 then
      state.pattern = nil
    end
    local kind
    if resources(state, s, false) > pattern_threshold then
      kind = 2
    elseif state.rate > rate_threshold then
      kind = 1
    else
      return nil
    end
    redis.call('DEL', KEYS[s + 2], KEYS[s + 3])
    redis.call('HSET', KEYS[s + 2], 'id', now, 'kind', kind, 'last', now, 'alerts', 0)
    state.id, state.kind, state.last, state.alerts, state.folded = now, kind, now, 0, 0
    state.ttl_set, state.folded_ttl_set = false, false
  end
  if now > state.last then
    redis.call('HSET', KEYS[s + 2], 'last', now)
    state.last = now
  end
  -- The window lives until inactivity or its maximum duration, whichever is first;
  -- within one call `now` is fixed, so setting it once per window is enough.
  local ttl = math.min(now + inactivity, state.id + max_duration) - now + 1
  if not state.ttl_set then
    redis.call('EXPIRE', KEYS[s + 2], ttl)
    state.ttl_set = true
  end
  if tracked then
    return nil
  end
  state.alerts = (state.alerts or 0) + 1
  state.alerts_dirty = true
  if redis.call('PFADD', KEYS[s + 3], resource) == 1 or not state.folded_ttl_set then
    state.folded = nil
    redis.call('EXPIRE', KEYS[s + 3], ttl)
    state.folded_ttl_set = true
  end
  local opened = 0
  if state.alerts == 1 then
    opened = 1
  end
  return {5, state.id, state.kind, state.alerts, resources(state, s, true), opened}
end

-- The writes `storm` left for the end of the call.
local function flush_scopes()
  for s, state in pairs(scopes) do
    if #state.deferred > 0 then
      pattern_added(s, redis.call('PFADD', KEYS[s + 1], unpack(state.deferred)))
    end
    if state.alerts_dirty then
      redis.call('HSET', KEYS[s + 2], 'alerts', state.alerts)
    end
  end
end

-- The flap key of the fingerprint whose dedup keys start at KEYS[d].
local function flap_key(d, field)
  local prefix, tag = string.match(KEYS[d], '^(.*)d:(%b{}):%d+$')
  local hex = string.gsub(field, '.', function(c) return string.format('%02x', string.byte(c)) end)
  return prefix .. 'f:' .. tag .. ':' .. hex
end

-- The transitions still within the window in a flap record's value.
local function transitions(value)
  local kept = {}
  for i = 2, #value - 3, 4 do
    local t = struct.unpack('>I4', value, i)
    if now - t < flap_window then
      kept[#kept + 1] = t
    end
  end
  return kept
end

local function flap_write(key, resolved, kept)
  local packed = { resolved and '\1' or '\0' }
  for _, t in ipairs(kept) do
    packed[#packed + 1] = struct.pack('>I4', t)
  end
  redis.call('SET', key, table.concat(packed), 'EX', flap_window)
end

-- A resolution: the incident's next firing signal is a transition.
local function flap_resolved(key)
  local value = redis.call('GET', key)
  flap_write(key, true, value and transitions(value) or {})
end

-- A firing signal: a transition if the last signal was a resolution. Answers the
-- transitions within the window, this one included (0: no transition).
local function flap_refired(key)
  local value = redis.call('GET', key)
  if not value or string.byte(value, 1) ~= 1 then
    return 0
  end
  local kept = transitions(value)
  kept[#kept + 1] = now
  while #kept > flap_keep do
    table.remove(kept, 1)
  end
  flap_write(key, false, kept)
  return #kept
end

local function decide(mode, field, d, s, resource, adopt_first, adopt_count)
  local found, value
  for i = 0, 2 do
    value = redis.call('HGET', KEYS[d + i], field)
    if value then
      found = i
      break
    end
  end
  local first, last, count
  local live, resolved = false, false
  if value then
    first, last, count = struct.unpack('>I4I4I4', value)
    if count >= RESOLVED_BIT then
      resolved, count = true, count - RESOLVED_BIT
    end
    live = (now - last) < window
  end

  if mode == ADOPT_WINDOW or mode == ADOPT_WINDOW + 1 then
    -- The sink holds this scope's aggregated request with its window still open,
    -- which Redis lost: take the window back and fold this alert into it. The
    -- incident just opened for the alert goes, so its repeats fold too.
    if found then
      redis.call('HDEL', KEYS[d + found], field)
    end
    local id, kind = adopt_first, mode - 2
    -- Concurrent adoptions of one window (a batch of its alerts after Redis lost
    -- it) count on from each other, not each from the sink's count.
    local w = redis.call('HMGET', KEYS[s + 2], 'id', 'alerts', 'last')
    local alerts = adopt_count + 1
    if tonumber(w[1]) == id and now - tonumber(w[3]) < inactivity then
      alerts = tonumber(w[2]) + 1
    end
    local ttl = math.min(now + inactivity, id + max_duration) - now + 1
    redis.call('HSET', KEYS[s + 2], 'id', id, 'kind', kind, 'last', now, 'alerts', alerts)
    redis.call('EXPIRE', KEYS[s + 2], ttl)
    redis.call('PFADD', KEYS[s + 3], resource)
    redis.call('EXPIRE', KEYS[s + 3], ttl)
    return {5, id, kind, alerts, redis.call('PFCOUNT', KEYS[s + 3]), 0}
  end

  -- An acknowledgement only reads: it is not an occurrence, so it neither counts
  -- nor moves last_seen (the dedup window runs on), nor takes part in flapping.
  if mode == ACKNOWLEDGE then
    if live then
      return {6, first, last, count}
    end
    return {7, 0, 0, 0}
  end

  -- A resolution counts nothing either; it marks the entry so that the next firing
  -- is a re-fire (a flap transition).
  if mode == RESOLVE then
    flap_resolved(flap_key(d, field))
    if live then
      if not resolved then
        redis.call('HSET', KEYS[d + found], field, struct.pack('>I4I4I4', first, last, count + RESOLVED_BIT))
      end
      return {2, first, last, count}
    end
    return {3, 0, 0, 0}
  end

  local function store(verdict)
    -- last >= now, so the entry belongs in the caller's bucket or the next one.
    local bucket = math.floor(last / window)
    local target = 0
    if bucket > now_bucket then
      target = 2
    end
    local stored = count
    if resolved then
      stored = count + RESOLVED_BIT
    end
    redis.call('HSET', KEYS[d + target], field, struct.pack('>I4I4I4', first, last, stored))
    if found and found ~= target then
      redis.call('HDEL', KEYS[d + found], field)
    end
    -- The bucket's key outlives the last entry that can still be live in it. Every
    -- writer of a bucket sets the same absolute expiry, so a key that already held
    -- this entry already has it.
    if found ~= target then
      redis.call('EXPIRE', KEYS[d + target], (bucket + 2) * window - now + 1)
    end
    return {verdict, first, last, count}
  end

  if mode == ADOPT then
    first, last, count = adopt_first, now, adopt_count
    return store(1)
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
  if s > 0 then
    local folded = storm(s, resource, live)
    if folded then
      return folded
    end
  end
  local flaps = 0
  if resolved or not live then
    flaps = flap_refired(flap_key(d, field))
  end
  resolved = false
  local r = store(verdict)
  r[5] = flaps
  return r
end

local replies = { struct.pack('>I4I4', 1, 0) }
for i = FIRST, #ARGV do
  local mode, d, s, adopt_first, adopt_count, resource = struct.unpack(RECORD, ARGV[i])
  local r = decide(mode, string.sub(ARGV[i], RECORD_BYTES + 1), d, s, resource, adopt_first, adopt_count)
  replies[#replies + 1] = struct.pack('>I4I4I4I4I4I4', r[1], r[2], r[3], r[4], r[5] or 0, r[6] or 0)
end
flush_scopes()
return table.concat(replies)
