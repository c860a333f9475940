#!/usr/bin/env python3
"""Probe / measure the tidegate Redis dedup key schema against a real redis-server.

Not a cargo bench: a standalone driver.  Needs `redis-server` (Redis >= 7.0) on
PATH and the python `redis` package (`pip install redis`).

Every test starts its OWN throw-away redis-server on a unix socket in a temp dir
(no persistence), and stops it by pid afterwards; no other Redis is touched.

    python3 benches/redis_schema_probe.py            # everything
    python3 benches/redis_schema_probe.py semantics oom mem1 mem2 migrate \
        compare throughput variants                  # pick some
    python3 benches/redis_schema_probe.py mem1 --n 200000

Schema (see src/state/redis/dedup.lua):
    fp     = SHA-256 (32 bytes)
    shard  = first 14 bits of fp, 4 lowercase hex chars (0000..3fff)
    field  = fp[2:10] (8 raw bytes)
    key    = <prefix>d:{<shard>}:<floor(now/window)>
    value  = struct '>I4I4I4' (first_seen, last_seen, count) = 12 bytes
"""
import argparse
import collections
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import redis

HERE = os.path.dirname(os.path.abspath(__file__))
LUA_PATH = os.path.join(HERE, "..", "src", "state", "redis", "dedup.lua")
PREFIX = "tg:"
WINDOW = 300


# --------------------------------------------------------------------------
# throw-away server
# --------------------------------------------------------------------------
class Server:
    def __init__(self, maxmemory="512mb", extra=()):
        self.dir = tempfile.mkdtemp(prefix="tg-redis-probe-")
        self.sock = os.path.join(self.dir, "redis.sock")
        args = [
            "redis-server", "--port", "0", "--unixsocket", self.sock,
            "--save", "", "--appendonly", "no", "--dir", self.dir,
            "--maxmemory", maxmemory, "--maxmemory-policy", "noeviction",
            "--logfile", os.path.join(self.dir, "redis.log"),
        ] + list(extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        self.r = redis.Redis(unix_socket_path=self.sock)
        for _ in range(200):
            try:
                if self.r.ping():
                    break
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.025)
        else:
            raise RuntimeError("redis-server did not come up")

    def close(self):
        try:
            self.r.close()
        finally:
            self.proc.terminate()  # only our own child, by pid
            self.proc.wait(10)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def lua_source():
    with open(LUA_PATH, "rb") as f:
        return f.read()


# --------------------------------------------------------------------------
# schema helpers
# --------------------------------------------------------------------------
def shard_of(fp, bits=14):
    return ((fp[0] << 8) | fp[1]) >> (16 - bits)


def keys_for(fp, now, window=WINDOW, bits=14, prefix=PREFIX):
    s = shard_of(fp, bits)
    b = now // window
    return (f"{prefix}d:{{{s:04x}}}:{b}", f"{prefix}d:{{{s:04x}}}:{b - 1}")


def field_of(fp):
    return fp[2:10]


def random_fps(n):
    return [os.urandom(32) for _ in range(n)]


def mem(r):
    m = r.info("memory")
    return {
        "used_memory": m["used_memory"],
        "used_memory_rss": m["used_memory_rss"],
        "mem_fragmentation_ratio": m["mem_fragmentation_ratio"],
        "used_memory_lua": m.get("used_memory_vm_eval", m.get("used_memory_lua")),
        "allocator_allocated": m.get("allocator_allocated"),
        "allocator_active": m.get("allocator_active"),
        "allocator_resident": m.get("allocator_resident"),
        "allocator_frag_ratio": m.get("allocator_frag_ratio"),
    }


def purged(r):
    r.memory_purge()
    time.sleep(0.5)
    m = mem(r)
    return (m["used_memory_rss"], m["mem_fragmentation_ratio"], "allocator_frag", m["allocator_frag_ratio"])


def settle(r):
    # let clientsCron shrink query buffers etc. before reading used_memory
    time.sleep(1.2)


def fire_all(r, sha, fps, now, window=WINDOW, bits=14, batch=1000, mode="fire"):
    statuses = collections.Counter()
    for i in range(0, len(fps), batch):
        p = r.pipeline(transaction=False)
        for fp in fps[i:i + batch]:
            k1, k2 = keys_for(fp, now, window, bits)
            p.evalsha(sha, 2, k1, k2, field_of(fp), now, window, mode)
        for res in p.execute():
            statuses[res[0]] += 1
    return statuses


def key_stats(r, pattern=PREFIX + "d:*"):
    lens, encs = [], collections.Counter()
    keys = list(r.scan_iter(match=pattern, count=5000))
    for i in range(0, len(keys), 1000):
        p = r.pipeline(transaction=False)
        for k in keys[i:i + 1000]:
            p.hlen(k)
            p.object("encoding", k)
        out = p.execute()
        lens += out[0::2]
        encs.update(e.decode() if isinstance(e, bytes) else e for e in out[1::2])
    return {
        "keys": len(keys),
        "fields_total": sum(lens),
        "fields_min": min(lens) if lens else 0,
        "fields_max": max(lens) if lens else 0,
        "fields_mean": round(sum(lens) / len(lens), 2) if lens else 0,
        "encodings": dict(encs),
        "sample_key": keys[0].decode() if keys else None,
    }


def report(title, d):
    print(f"\n== {title}")
    for k, v in d.items():
        print(f"   {k:28s} {v}")


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------
def t_semantics(args):
    ok = True

    def check(name, got, want):
        nonlocal ok
        good = got == want
        ok &= good
        print(f"   [{'ok' if good else 'FAIL'}] {name}: got {got!r} want {want!r}")

    with Server() as s:
        r = s.r
        sha = r.script_load(lua_source())
        w = WINDOW
        b = int(time.time()) // w
        T = b * w + w - 5          # 5 s before the bucket boundary
        fp = bytes([0x03, 0xFA]) + b"\x00\xff\x80\x7f\x0a\x0d\x00\xfe" + os.urandom(22)
        k1, k2 = keys_for(fp, T)
        f = field_of(fp)
        print("\n== semantics")
        print(f"   key for bucket {b}: {k1!r}; field (binary) {f!r}")
        check("shard key name", k1, f"tg:d:{{00fe}}:{b}")  # 0x03fa >> 2 = 0x00fe

        def ev(now, mode="fire", fld=f):
            a, c = keys_for(fp, now)
            return r.evalsha(sha, 2, a, c, fld, now, w, mode)

        check("fire new", ev(T), [0, T, T, 1])
        check("TTL = (b+2)*w - now + 1", r.ttl(k1), (b + 2) * w - T + 1)
        check("stored value 12 bytes", r.hget(k1, f), struct.pack(">III", T, T, 1))
        check("binary field round-trips", r.hkeys(k1), [f])
        check("fire dup same bucket", ev(T + 3), [1, T, T + 3, 2])
        # cross bucket boundary: T+3 is in bucket b, T+10 in bucket b+1
        T2 = T + 10
        n1, n2 = keys_for(fp, T2)
        check("dup across boundary", ev(T2), [1, T, T2, 3])
        check("moved out of prev bucket (prev key gone)", r.exists(n2), 0)
        check("now in current bucket", r.hget(n1, f), struct.pack(">III", T, T2, 3))
        check("TTL of new bucket", r.ttl(n1), (b + 3) * w - T2 + 1)
        dirty = r.info("persistence")["rdb_changes_since_last_save"]
        check("resolve live (age w-1)", ev(T2 + w - 1, "resolve"), [2, T, T2, 3])
        check("resolve expired (age == w)", ev(T2 + w, "resolve"), [3, 0, 0, 0])
        check("resolve does not write",
              r.info("persistence")["rdb_changes_since_last_save"], dirty)
        # exactly w old -> new episode; stale copy in prev bucket is removed
        T3 = T2 + w   # bucket b+2; entry is in b+1 = prev
        c1, c2 = keys_for(fp, T3)
        check("fire at age == w is new", ev(T3), [0, T3, T3, 1])
        check("stale copy deleted from prev", r.hexists(c2, f), False)
        check("dup after re-open", ev(T3 + 1), [1, T3, T3 + 1, 2])
        # entry two buckets back is invisible (and its key is expired by TTL anyway)
        T4 = T3 + 2 * w
        check("two buckets later: new", ev(T4), [0, T4, T4, 1])
        try:
            ev(T4, "bogus")
            check("bad mode errors", "no error", "error")
        except redis.ResponseError as e:
            check("bad mode errors", "bad mode" in str(e), True)
        # resolve on absent
        check("resolve absent", ev(T4, "resolve", b"\x01" * 8), [3, 0, 0, 0])
    print(f"   semantics: {'ALL OK' if ok else 'FAILURES'}")
    return ok


NO_WRITES_RESOLVE = b"""#!lua flags=no-writes
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then v = redis.call('HGET', KEYS[2], ARGV[1]) end
if not v then return {3, 0, 0, 0} end
local f, l, c = struct.unpack('>I4I4I4', v)
if tonumber(ARGV[2]) - l < tonumber(ARGV[3]) then return {2, f, l, c} end
return {3, 0, 0, 0}
"""


def t_oom(args):
    print("\n== OOM behaviour (noeviction)")
    src = lua_source()
    noshebang = b"\n".join(l for l in src.split(b"\n") if not l.startswith(b"#!"))
    with Server(maxmemory="0") as s:
        r = s.r
        print(f"   empty server used_memory={r.info('memory')['used_memory']}")
        sha = r.script_load(src)
        sha_ns = r.script_load(noshebang)
        sha_ro = r.script_load(NO_WRITES_RESOLVE)
        now = int(time.time())
        fp_old = os.urandom(32)
        k1, k2 = keys_for(fp_old, now)
        print("   pre-OOM fire:", r.evalsha(sha, 2, k1, k2, field_of(fp_old), now, WINDOW, "fire"))
        # 1mb is below an idle 7.0 server's own footprint (~1.0-1.1 MB), so use
        # max(1mb, used_memory + 256KB) and fill up to it with 1KB strings.
        limit = max(1 << 20, r.info("memory")["used_memory"] + (256 << 10))
        r.config_set("maxmemory", limit)
        print(f"   CONFIG SET maxmemory {limit}")
        i = 0
        while True:
            try:
                r.set(f"fill:{i}", b"x" * 1024)
                i += 1
            except redis.exceptions.ResponseError as e:  # OutOfMemoryError subclasses it
                print(f"   filled {i} x 1KB keys, then SET -> {type(e).__name__}: {e}")
                break
        m = r.info("memory")
        print(f"   used_memory={m['used_memory']} maxmemory={m['maxmemory']}")
        dbsize0 = r.dbsize()
        dirty0 = r.info("persistence")["rdb_changes_since_last_save"]
        old_val = r.hget(k1, field_of(fp_old))

        def attempt(label, fn):
            try:
                print(f"   {label}: OK -> {fn()}")
            except redis.exceptions.RedisError as e:
                print(f"   {label}: {type(e).__name__}: {e}")

        fp_new = os.urandom(32)
        n1, n2 = keys_for(fp_new, now)
        attempt("EVALSHA #!lua fire (new fp)",
                lambda: r.evalsha(sha, 2, n1, n2, field_of(fp_new), now, WINDOW, "fire"))
        attempt("EVALSHA #!lua fire (existing fp)",
                lambda: r.evalsha(sha, 2, k1, k2, field_of(fp_old), now + 1, WINDOW, "fire"))
        attempt("EVAL    #!lua fire (source)",
                lambda: r.eval(src, 2, n1, n2, field_of(fp_new), now, WINDOW, "fire"))
        attempt("EVALSHA #!lua resolve",
                lambda: r.evalsha(sha, 2, k1, k2, field_of(fp_old), now + 1, WINDOW, "resolve"))
        attempt("EVALSHA_RO #!lua resolve",
                lambda: r.execute_command("EVALSHA_RO", sha, 2, k1, k2, field_of(fp_old), now + 1, WINDOW, "resolve"))
        print(f"   -> after #!lua attempts: dbsize {dbsize0}->{r.dbsize()}, "
              f"dirty {dirty0}->{r.info('persistence')['rdb_changes_since_last_save']}, "
              f"new fp present={r.hexists(n1, field_of(fp_new))}, "
              f"existing value unchanged={r.hget(k1, field_of(fp_old)) == old_val}")
        attempt("EVALSHA 'flags=no-writes' resolve script",
                lambda: r.evalsha(sha_ro, 2, k1, k2, field_of(fp_old), now + 1, WINDOW))
        attempt("EVALSHA_RO 'flags=no-writes' resolve script",
                lambda: r.execute_command("EVALSHA_RO", sha_ro, 2, k1, k2, field_of(fp_old), now + 1, WINDOW))
        dirty1 = r.info("persistence")["rdb_changes_since_last_save"]
        attempt("EVALSHA no-shebang fire (new fp)",
                lambda: r.evalsha(sha_ns, 2, n1, n2, field_of(fp_new), now, WINDOW, "fire"))
        attempt("EVALSHA no-shebang fire (existing fp)",
                lambda: r.evalsha(sha_ns, 2, k1, k2, field_of(fp_old), now + 1, WINDOW, "fire"))
        attempt("EVALSHA no-shebang resolve",
                lambda: r.evalsha(sha_ns, 2, k1, k2, field_of(fp_old), now + 1, WINDOW, "resolve"))
        print(f"   -> after no-shebang attempts: dirty {dirty1}->"
              f"{r.info('persistence')['rdb_changes_since_last_save']}, "
              f"new fp present={r.hexists(n1, field_of(fp_new))}, "
              f"existing value unchanged={r.hget(k1, field_of(fp_old)) == old_val}")
        # free memory again -> fire works
        for j in range(0, i, 500):
            r.delete(*[f"fill:{x}" for x in range(j, min(i, j + 500))])
        attempt("after freeing memory: #!lua fire (new fp)",
                lambda: r.evalsha(sha, 2, n1, n2, field_of(fp_new), now, WINDOW, "fire"))


def t_mem1(args):
    n = args.n
    with Server() as s:
        r = s.r
        sha = r.script_load(lua_source())
        now = int(time.time())
        fps = random_fps(n)
        settle(r)
        m0 = mem(r)
        t0 = time.time()
        st = fire_all(r, sha, fps, now)
        dt = time.time() - t0
        settle(r)
        m1 = mem(r)
        ks = key_stats(r)
        sample = ks["sample_key"]
        d = m1["used_memory"] - m0["used_memory"]
        report(f"mem1: {n} distinct fps, one bucket, window {WINDOW}", {
            "statuses": dict(st),
            "used_memory before": m0["used_memory"],
            "used_memory after": m1["used_memory"],
            "delta": d,
            "BYTES PER FINGERPRINT": round(d / n, 2),
            "used_memory_rss before/after": (m0["used_memory_rss"], m1["used_memory_rss"]),
            "rss delta per fingerprint": round((m1["used_memory_rss"] - m0["used_memory_rss"]) / n, 2),
            "mem_fragmentation_ratio": m1["mem_fragmentation_ratio"],
            "allocator allocated/active/resident": (m1["allocator_allocated"], m1["allocator_active"], m1["allocator_resident"]),
            "allocator_frag_ratio": m1["allocator_frag_ratio"],
            "after MEMORY PURGE: rss / frag": purged(r),
            "used_memory_lua (not in used_memory)": m1["used_memory_lua"],
            "dbsize": r.dbsize(),
            "keyspace": r.info("keyspace"),
            "sample key": sample,
            "OBJECT ENCODING sample": r.object("encoding", sample),
            "MEMORY USAGE sample (bytes)": r.memory_usage(sample, samples=0),
            "HLEN sample": r.hlen(sample),
            "TTL sample": r.ttl(sample),
            "keys / fields min/max/mean": (ks["keys"], ks["fields_min"], ks["fields_max"], ks["fields_mean"]),
            "encodings over all keys": ks["encodings"],
            "hash-max-listpack-entries": r.config_get("hash-max-listpack-entries"),
            "hash-max-listpack-value": r.config_get("hash-max-listpack-value"),
            "insert rate (pipeline 1000)": f"{n / dt:.0f} calls/s",
        })


def t_mem2(args):
    n = args.n
    with Server() as s:
        r = s.r
        sha = r.script_load(lua_source())
        now = int(time.time())
        fps = random_fps(n)
        settle(r)
        m0 = mem(r)
        st = fire_all(r, sha, fps[: n // 2], now)
        st += fire_all(r, sha, fps[n // 2:], now + WINDOW)
        settle(r)
        m1 = mem(r)
        ks = key_stats(r)
        d = m1["used_memory"] - m0["used_memory"]
        report(f"mem2: {n} distinct fps, half in prev bucket (now, now+{WINDOW})", {
            "statuses": dict(st),
            "delta used_memory": d,
            "BYTES PER FINGERPRINT": round(d / n, 2),
            "mem_fragmentation_ratio": m1["mem_fragmentation_ratio"],
            "dbsize": r.dbsize(),
            "keys / fields min/max/mean": (ks["keys"], ks["fields_min"], ks["fields_max"], ks["fields_mean"]),
            "encodings": ks["encodings"],
        })


def t_migrate(args):
    """Realistic churn: n fps fired at now, half of them re-fired one window later
    (moved prev->cur with HDEL)."""
    n = args.n
    with Server() as s:
        r = s.r
        sha = r.script_load(lua_source())
        now = int(time.time())
        now = (now // WINDOW) * WINDOW + 100  # re-fire at now+200 is the next bucket and still live
        fps = random_fps(n)
        settle(r)
        m0 = mem(r)
        st = fire_all(r, sha, fps, now)
        st2 = fire_all(r, sha, fps[: n // 2], now + 200)
        settle(r)
        m1 = mem(r)
        ks = key_stats(r)
        d = m1["used_memory"] - m0["used_memory"]
        report(f"migrate: {n} fps at now, {n // 2} re-fired at now+200 (next bucket, live)", {
            "statuses first pass": dict(st),
            "statuses re-fire (1=dup)": dict(st2),
            "delta used_memory": d,
            "BYTES PER FINGERPRINT": round(d / n, 2),
            "mem_fragmentation_ratio": m1["mem_fragmentation_ratio"],
            "dbsize": r.dbsize(),
            "keys / fields min/max/mean": (ks["keys"], ks["fields_min"], ks["fields_max"], ks["fields_mean"]),
            "encodings": ks["encodings"],
        })


def t_compare(args):
    n = args.n
    val = struct.pack(">III", 1, 2, 3)
    with Server() as s:
        r = s.r
        settle(r)
        m0 = mem(r)
        for i in range(0, n, 1000):
            p = r.pipeline(transaction=False)
            for _ in range(1000 if i + 1000 <= n else n - i):
                p.set(os.urandom(32).hex(), val, ex=WINDOW)
            p.execute()
        settle(r)
        m1 = mem(r)
        d = m1["used_memory"] - m0["used_memory"]
        k = r.randomkey()
        report(f"compare A: SET <64hex> <12B> EX {WINDOW}, {n} keys", {
            "delta used_memory": d,
            "BYTES PER ENTRY": round(d / n, 2),
            "encoding sample": r.object("encoding", k),
            "mem_fragmentation_ratio": m1["mem_fragmentation_ratio"],
        })
    with Server() as s:
        r = s.r
        settle(r)
        m0 = mem(r)
        now = int(time.time())
        for i in range(0, n, 1000):
            p = r.pipeline(transaction=False)
            for _ in range(1000 if i + 1000 <= n else n - i):
                k = "tidegate:dedup:" + os.urandom(32).hex()
                p.hset(k, mapping={"first_seen": now, "last_seen": now, "count": 1})
                p.expire(k, WINDOW)
            p.execute()
        settle(r)
        m1 = mem(r)
        d = m1["used_memory"] - m0["used_memory"]
        k = r.randomkey()
        report(f"compare B: HASH per fp, key tidegate:dedup:<64hex>, fields first_seen/last_seen/count, EXPIRE {WINDOW}, {n} keys", {
            "delta used_memory": d,
            "BYTES PER ENTRY": round(d / n, 2),
            "encoding sample": r.object("encoding", k),
            "mem_fragmentation_ratio": m1["mem_fragmentation_ratio"],
        })


def t_throughput(args):
    n = args.tn
    with Server() as s:
        r = s.r
        sha = r.script_load(lua_source())
        now = int(time.time())
        out = {}
        for depth in (1, 10, 100, 1000):
            cnt = n if depth > 1 else n // 5
            fps = random_fps(cnt)
            r.config_resetstat()
            t0 = time.time()
            if depth == 1:
                for fp in fps:
                    k1, k2 = keys_for(fp, now)
                    r.evalsha(sha, 2, k1, k2, field_of(fp), now, WINDOW, "fire")
            else:
                fire_all(r, sha, fps, now, batch=depth)
            dt = time.time() - t0
            cs = r.info("commandstats").get("cmdstat_evalsha", {})
            out[f"pipeline {depth:4d}"] = (f"{cnt / dt:8.0f} calls/s  ({cnt} calls, {dt:.2f}s); "
                                          f"server usec_per_call={cs.get('usec_per_call')}")
        # duplicate path (all hits, same bucket)
        fps = fps[: n]
        r.config_resetstat()
        t0 = time.time()
        fire_all(r, sha, fps, now + 1, batch=10)
        dt = time.time() - t0
        cs = r.info("commandstats").get("cmdstat_evalsha", {})
        out["pipeline   10 dup hits"] = (f"{len(fps) / dt:8.0f} calls/s; "
                                         f"server usec_per_call={cs.get('usec_per_call')}")
        out["keys in db at end"] = r.dbsize()
        report("throughput (one python client, redis-py, unix socket, fire mode)", out)


def t_variants(args):
    """Shard-bit variants (field stays fp[2:10]; key hex stays 4 chars)."""
    n = args.n
    rows = []
    for bits in (12, 14, 16):
        with Server() as s:
            r = s.r
            sha = r.script_load(lua_source())
            now = int(time.time())
            fps = random_fps(n)
            settle(r)
            m0 = mem(r)
            fire_all(r, sha, fps, now, bits=bits)
            settle(r)
            m1 = mem(r)
            ks = key_stats(r)
            d = m1["used_memory"] - m0["used_memory"]
            rows.append((bits, round(d / n, 2), ks["keys"], ks["fields_max"], ks["fields_mean"],
                         ks["encodings"], m1["mem_fragmentation_ratio"]))
    print(f"\n== variants: shard bits, {n} fps one bucket")
    print("   bits  B/fp   keys   max  mean   encodings  frag")
    for row in rows:
        print("   %4d %6.2f %6d %5d %6.2f  %s  %s" % row)


def capacity_note():
    """Poisson estimate: live fps per bucket before some key exceeds N entries."""
    def tail(lam, k):  # P(X > k)
        term = math.exp(-lam)
        cdf = term
        for i in range(1, k + 1):
            term *= lam / i
            cdf += term
        return max(0.0, 1 - cdf)
    print("\n== capacity estimate (Poisson): live fps per bucket s.t. P(any of 16384 keys > limit) ~ 1%")
    for limit in (128, 512):
        lo, hi = 1000, 20_000_000
        while hi - lo > 1000:
            mid = (lo + hi) // 2
            p = 1 - (1 - tail(mid / 16384, limit)) ** 16384
            if p < 0.01:
                lo = mid
            else:
                hi = mid
        print(f"   limit {limit}: ~{lo:,} fps per bucket (mean {lo / 16384:.0f}/key)")


TESTS = {
    "semantics": t_semantics,
    "oom": t_oom,
    "mem1": t_mem1,
    "mem2": t_mem2,
    "migrate": t_migrate,
    "compare": t_compare,
    "throughput": t_throughput,
    "variants": t_variants,
    "capacity": lambda a: capacity_note(),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tests", nargs="*", default=list(TESTS), help=" ".join(TESTS))
    ap.add_argument("--n", type=int, default=1_000_000, help="fingerprints for memory tests")
    ap.add_argument("--tn", type=int, default=200_000, help="calls per throughput run")
    args = ap.parse_args()
    print(f"redis-server: {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.strip()}")
    print(f"redis-py {redis.__version__}, python {sys.version.split()[0]}, script {os.path.normpath(LUA_PATH)}")
    ok = True
    for t in args.tests:
        res = TESTS[t](args)
        if res is False:
            ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
