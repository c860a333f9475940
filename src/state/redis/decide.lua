-- tidegate's decision for a batch of signals, atomically and in order: first the
-- request's rate-limit charge, if it has one, then for each signal dedup and storm
-- detection. The same rules as the embedded store, and the same conformance suite.
-- The library holds `gcra.lua` too (see `Library::decide` in mod.rs).
--
-- Keys are passed once each, however many signals of the batch use them; a signal
-- names its keys by index into KEYS.
--
-- Dedup. An open incident lives in the hash of the time bucket of its last sighting:
--   KEYS[d] = <prefix>d:{<tag>}:<b>, b = floor(now / window)
-- and the script looks it up there, then in <prefix>d:{<tag>}:<b-1> (entries seen
-- within the last window), then in :<b+1> (entries written by a replica whose clock
-- runs slightly ahead). It names those two from KEYS[d] (same hash tag, so the same
-- slot) rather than taking them in KEYS: a repeat found in its bucket never needs
-- them, and two more keys per signal lengthened every call. Field: bytes of the
-- fingerprint; value: struct '>I4I4I4' = first_seen, last_seen, count (12 bytes).
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
-- (see gcra.lua), and the header's charge fields are set.
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
-- One argument: a packed string (each argument is a string Redis parses and Lua
-- interns, which cost more per call than all of a small batch's decoding), the
-- header then one record per signal.
--   header, struct '>I4I4I4I4I4I4I4I4I4I4BI8I8I8B' = now (s), window (s), rate
--   threshold, rate window, pattern threshold, pattern window, inactivity, max
--   duration, flap window (s), flap keep, charged (0|1), then for a charge now (ms),
--   emission interval, tolerance (zeros otherwise), then the fields' length (8, or
--   10 on Cluster: every field of a call has one length);
--   a record, struct '>BI4I4I4I4c8' = mode (0 fire | 1 resolve | 2 adopt | 3 adopt
--   a rate window | 4 adopt a pattern window | 5 acknowledge), d, s (0: no storm
--   keys), for adopt first_seen and count (the incident an authority says is open),
--   for a window its id and alert count, for a firing signal with storm keys 0 and
--   the firing signals of its scope in this call (0 otherwise), resource (8 bytes;
--   zeros without storm keys); then the field.
-- Reply: one string: 8 bytes of admission, two big-endian u32s (1, 0) allowed or
-- (0, retry after in ms) limited, in which case nothing else was done and nothing
-- follows; then 24 bytes per signal in order: six big-endian u32s,
--   0 new | 1 duplicate | 2 resolved-open | 3 resolved-unknown | 6 acknowledged-open
--   | 7 acknowledged-unknown, first, last, count, flap transitions (0: not a
--   re-fire), 0
-- | 5, window id, kind (1 rate, 2 pattern), alerts, resources, first folded (0|1)
-- (one string rather than nested arrays: the client decodes it without allocating)

-- What Redis spends on a call is mostly this interpreter's work, not the commands':
-- every closure, table and string made here is garbage Redis collects on its own
-- time. So this is a library of Redis Functions (loaded once; its helpers are made
-- when it loads, not on every call as a script's are), functions take and return
-- plain values (no result tables, no closures per signal), library functions are
-- looked up once per call, and floors are arithmetic.
--
-- Redis 7.0 gives a library nothing but `redis.register_function` while it loads,
-- so what the helpers use is looked up when a call starts (`decide` below).
local call, sunpack, pack, tonumber, sub, byte, format, find

-- A number as Redis reads it. Redis spells a number argument with '%.17g', whose
-- floating-point formatting costs more than the command it is for; '%d' does not.
local function int(n)
  return format('%d', n)
end

-- The call's keys, its header, and its time as Redis reads it.
local KEYS
local now, now_s, window, now_bucket, bucket_digits
local rate_threshold, rate_window, pattern_threshold, pattern_window, inactivity, max_duration
local flap_window, flap_window_s, flap_keep

local HEADER = '>I4I4I4I4I4I4I4I4I4I4BI8I8I8B'
local HEADER_BYTES = 66

-- Bit 31 of an entry's stored count: a resolution came after its last firing.
local RESOLVED_BIT = 2147483648

local FIRE, RESOLVE, ADOPT, ADOPT_WINDOW, ACKNOWLEDGE = 0, 1, 2, 3, 5
local RECORD_BYTES = 25

-- The bucket keys of the tag whose bucket `now_bucket` is KEYS[d]: the one before
-- (i = 1) or after (i = 2), named only when a lookup misses the caller's bucket.
local function dedup_key(d, i)
  local key = KEYS[d]
  if i == 1 then
    return sub(key, 1, #key - bucket_digits) .. int(now_bucket - 1)
  end
  return sub(key, 1, #key - bucket_digits) .. int(now_bucket + 1)
end

-- What this call knows of each storm scope. Redis' per-command cost inside a script
-- dwarfs the work of these commands, so a scope is read once per call, and writes
-- that later alerts of the call would overwrite go to Redis once, at the end. The
-- script is atomic: nobody can tell the difference.
local scopes
-- `firing`: the call's firing signals of the scope (the caller counts them).
local function scope_state(s, firing)
  local state = scopes[s]
  if not state then
    local w = call('HMGET', KEYS[s + 2], 'id', 'kind', 'last', 'alerts')
    local last = tonumber(w[3])
    state = { id = tonumber(w[1]), kind = tonumber(w[2]), last = last, alerts = tonumber(w[4]), deferred = 0 }
    -- Whoever moved `last` to this second also set the window's expiry from it.
    state.ttl_set = last == now
    local rate = call('INCRBY', KEYS[s], int(firing))
    if rate == firing then
      -- Window counters expire at their window's end: set once, when created.
      call('EXPIRE', KEYS[s], int(rate_window - now % rate_window + 1))
    end
    state.rate = rate - firing
    scopes[s] = state
  end
  return state
end

-- Distinct resources of the pattern window, or of the aggregation window when
-- `folded`: counted again only after an add changed the HyperLogLog.
local function resources(state, s, folded)
  if folded then
    if not state.folded then
      state.folded = call('PFCOUNT', KEYS[s + 3])
    end
    return state.folded
  end
  if not state.pattern then
    state.pattern = call('PFCOUNT', KEYS[s + 1])
  end
  return state.pattern
end

-- After an add changed the pattern HyperLogLog (and perhaps created it): its expiry,
-- the end of its window, which is the same for every add of the call.
local function pattern_added(state, s, changed)
  if changed == 1 and not state.pattern_ttl_set then
    call('EXPIRE', KEYS[s + 1], int(pattern_window - now % pattern_window + 1))
    state.pattern_ttl_set = true
  end
end

-- Storm detection counts every firing alert; it folds only alerts that are not a
-- repeat of an open incident (those stay counted on their own request). Answers
-- the window an alert folded into (id, kind, alerts, resources, first folded), or
-- nothing.
local function storm(s, resource, tracked, firing)
  local state = scope_state(s, firing)
  state.rate = state.rate + 1
  local open = state.id and now - state.last < inactivity and now - state.id < max_duration
  if open then
    -- An open window stays open for the rest of the call (`now` is fixed), so no
    -- later alert of the call needs the pattern count: add its resource at the end.
    local n = state.deferred + 1
    state.deferred = n
    state[n] = resource
  else
    local changed = call('PFADD', KEYS[s + 1], resource)
    pattern_added(state, s, changed)
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
    call('DEL', KEYS[s + 2], KEYS[s + 3])
    call('HSET', KEYS[s + 2], 'id', now_s, 'kind', int(kind), 'last', now_s, 'alerts', '0')
    state.id, state.kind, state.last, state.alerts, state.folded = now, kind, now, 0, 0
    state.ttl_set, state.folded_ttl_set = false, false
  end
  if now > state.last then
    call('HSET', KEYS[s + 2], 'last', now_s)
    state.last = now
  end
  -- The window lives until inactivity or its maximum duration, whichever is first;
  -- within one call `now` is fixed, so setting it once per window is enough.
  local ttl = inactivity + 1
  if state.id + max_duration - now < inactivity then
    ttl = state.id + max_duration - now + 1
  end
  if not state.ttl_set then
    call('EXPIRE', KEYS[s + 2], int(ttl))
    state.ttl_set = true
  end
  if tracked then
    return nil
  end
  local alerts = (state.alerts or 0) + 1
  state.alerts = alerts
  state.alerts_dirty = true
  if call('PFADD', KEYS[s + 3], resource) == 1 then
    state.folded = nil
  end
  -- Set once per window and call: `ttl` is the same for all its alerts.
  if not state.folded_ttl_set then
    call('EXPIRE', KEYS[s + 3], int(ttl))
    state.folded_ttl_set = true
  end
  local opened = 0
  if alerts == 1 then
    opened = 1
  end
  return state.id, state.kind, alerts, resources(state, s, true), opened
end

-- The writes `storm` left for the end of the call.
local function flush_scopes()
  for s, state in pairs(scopes) do
    if state.deferred > 0 then
      pattern_added(state, s, call('PFADD', KEYS[s + 1], unpack(state, 1, state.deferred)))
    end
    if state.alerts_dirty then
      call('HSET', KEYS[s + 2], 'alerts', int(state.alerts))
    end
  end
end

-- The flap key of the fingerprint whose bucket key is KEYS[d]: the same prefix and
-- hash tag, `f:` and the field in hex.
local hex_format
local function flap_key(d, field)
  local key = KEYS[d]
  local tag = find(key, '{', 1, true)
  if not hex_format then
    hex_format = string.rep('%02x', #field)
  end
  return sub(key, 1, tag - 3) .. 'f:' .. sub(key, tag, #key - bucket_digits) .. format(hex_format, byte(field, 1, -1))
end

-- The transitions still within the window in a flap record's value.
local function transitions(value)
  local kept = {}
  for i = 2, #value - 3, 4 do
    local t = sunpack('>I4', value, i)
    if now - t < flap_window then
      kept[#kept + 1] = t
    end
  end
  return kept
end

local function flap_write(key, resolved, kept)
  local packed = { resolved and '\1' or '\0' }
  for _, t in ipairs(kept) do
    packed[#packed + 1] = pack('>I4', t)
  end
  call('SET', key, table.concat(packed), 'EX', flap_window_s)
end

-- A resolution: the incident's next firing signal is a transition.
local function flap_resolved(key)
  local value = call('GET', key)
  flap_write(key, true, value and transitions(value) or {})
end

-- A firing signal: a transition if the last signal was a resolution. Answers the
-- transitions within the window, this one included (0: no transition).
local function flap_refired(key)
  local value = call('GET', key)
  if not value or byte(value, 1) ~= 1 then
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

-- Writes an entry (`stored`: its count with the resolved bit) to the bucket of its
-- last sighting, from bucket `found` (0, 1, 2: the caller's, the one before, the
-- one after; nil: nowhere) whose key is `found_key`.
local function store(d, found, found_key, field, first, last, stored)
  -- last >= now, so the entry belongs in the caller's bucket or the next one.
  local bucket = (last - last % window) / window
  local target, key = 0, KEYS[d]
  if bucket > now_bucket then
    target = 2
    key = found == 2 and found_key or dedup_key(d, 2)
  end
  call('HSET', key, field, pack('>I4I4I4', first, last, stored))
  if found ~= target then
    if found then
      call('HDEL', found_key, field)
    end
    -- The bucket's key outlives the last entry that can still be live in it. Every
    -- writer of a bucket sets the same absolute expiry, so a key that already held
    -- this entry already has it.
    call('EXPIRE', key, int((bucket + 2) * window - now + 1))
  end
end

-- One signal's verdict: the six words of its reply.
local function decide_one(mode, field, d, s, resource, adopt_first, adopt_count)
  local found, found_key = 0, KEYS[d]
  local value = call('HGET', found_key, field)
  if not value then
    found, found_key = 1, dedup_key(d, 1)
    value = call('HGET', found_key, field)
    if not value then
      found, found_key = 2, dedup_key(d, 2)
      value = call('HGET', found_key, field)
      if not value then
        found, found_key = nil, nil
      end
    end
  end
  local first, last, count
  local live, resolved = false, false
  if value then
    first, last, count = sunpack('>I4I4I4', value)
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
      call('HDEL', found_key, field)
    end
    local id, kind = adopt_first, mode - 2
    -- Concurrent adoptions of one window (a batch of its alerts after Redis lost
    -- it) count on from each other, not each from the sink's count.
    local w = call('HMGET', KEYS[s + 2], 'id', 'alerts', 'last')
    local alerts = adopt_count + 1
    if tonumber(w[1]) == id and now - tonumber(w[3]) < inactivity then
      alerts = tonumber(w[2]) + 1
    end
    local ttl = math.min(now + inactivity, id + max_duration) - now + 1
    call('HSET', KEYS[s + 2], 'id', int(id), 'kind', int(kind), 'last', now_s, 'alerts', int(alerts))
    call('EXPIRE', KEYS[s + 2], int(ttl))
    call('PFADD', KEYS[s + 3], resource)
    call('EXPIRE', KEYS[s + 3], int(ttl))
    return 5, id, kind, alerts, call('PFCOUNT', KEYS[s + 3]), 0
  end

  -- An acknowledgement only reads: it is not an occurrence, so it neither counts
  -- nor moves last_seen (the dedup window runs on), nor takes part in flapping.
  if mode == ACKNOWLEDGE then
    if live then
      return 6, first, last, count, 0, 0
    end
    return 7, 0, 0, 0, 0, 0
  end

  -- A resolution counts nothing either; it marks the entry so that the next firing
  -- is a re-fire (a flap transition).
  if mode == RESOLVE then
    flap_resolved(flap_key(d, field))
    if live then
      if not resolved then
        call('HSET', found_key, field, pack('>I4I4I4', first, last, count + RESOLVED_BIT))
      end
      return 2, first, last, count, 0, 0
    end
    return 3, 0, 0, 0, 0, 0
  end

  if mode == ADOPT then
    first, last = adopt_first, now
    store(d, found, found_key, field, first, last, resolved and adopt_count + RESOLVED_BIT or adopt_count)
    return 1, first, last, adopt_count, 0, 0
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
    -- A firing signal's record carries its scope's firing count in this call.
    local id, kind, alerts, folded_resources, opened = storm(s, resource, live, adopt_count)
    if id then
      return 5, id, kind, alerts, folded_resources, opened
    end
  end
  local flaps = 0
  if resolved or not live then
    flaps = flap_refired(flap_key(d, field))
  end
  store(d, found, found_key, field, first, last, count)
  return verdict, first, last, count, flaps, 0
end

-- The function: decides the call's signals in order and answers their verdicts.
local function decide(keys, args)
  call, sunpack, pack = redis.call, struct.unpack, struct.pack
  tonumber, sub, byte, format, find = _G.tonumber, string.sub, string.byte, string.format, string.find
  KEYS, scopes, hex_format = keys, {}, nil
  local blob = args[1]
  local charged, now_ms, interval, tolerance, field_bytes
  now, window, rate_threshold, rate_window, pattern_threshold, pattern_window, inactivity, max_duration,
    flap_window, flap_keep, charged, now_ms, interval, tolerance, field_bytes = sunpack(HEADER, blob)
  now_s, flap_window_s = int(now), int(flap_window)
  now_bucket = (now - now % window) / window
  bucket_digits = #int(now_bucket)

  if charged == 1 then
    local allowed, retry = gcra(keys[1], now_ms, interval, tolerance)
    if allowed == 0 then
      return pack('>I4I4', 0, retry)
    end
  end

  local replies = { pack('>I4I4', 1, 0) }
  local size = RECORD_BYTES + field_bytes
  local n = 1
  -- Decoded with `byte` and arithmetic: `struct.unpack` would make a string of the
  -- resource of every signal, and parse its format each time.
  for p = HEADER_BYTES + 1, #blob, size do
    local mode, d1, d2, d3, d4, s1, s2, s3, s4, f1, f2, f3, f4, c1, c2, c3, c4 = byte(blob, p, p + 16)
    local s = ((s1 * 256 + s2) * 256 + s3) * 256 + s4
    local resource
    if s > 0 then
      resource = sub(blob, p + 17, p + 24)
    end
    n = n + 1
    replies[n] = pack(
      '>I4I4I4I4I4I4',
      decide_one(
        mode,
        sub(blob, p + RECORD_BYTES, p + size - 1),
        ((d1 * 256 + d2) * 256 + d3) * 256 + d4,
        s,
        resource,
        ((f1 * 256 + f2) * 256 + f3) * 256 + f4,
        ((c1 * 256 + c2) * 256 + c3) * 256 + c4
      )
    )
  end
  flush_scopes()
  return table.concat(replies)
end
