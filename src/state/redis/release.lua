#!lua flags=allow-oom
-- Ends inhibit holds whose source incident has resolved (allowed under OOM: it
-- only frees memory). KEYS[i] is an inhibit key; ARGV[i] the 36 bytes (epoch,
-- fingerprint) its value starts with while the releasing incident holds it. A key
-- another source has taken over since is left alone. Every inhibit key shares one hash tag, so one call serves a batch on a
-- Cluster too. Returns how many holds ended.
local released = 0
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if value and string.sub(value, 1, 36) == ARGV[i] then
    redis.call('DEL', key)
    released = released + 1
  end
end
return released
