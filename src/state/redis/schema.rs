//! The Redis key schema: where each fingerprint's 12 bytes live, and the keys of
//! storm detection and rate limiting.
//!
//! `<prefix>d:{<shard>}:<bucket>` is a hash. The shard is the top 14 bits of the
//! fingerprint (16,384 shards, 4 hex digits inside a hash tag, so every bucket of a
//! shard sits in one Cluster slot); the bucket is `floor(last_seen / window)`. The
//! field is the next 8 bytes of the fingerprint and the value is
//! `first_seen, last_seen, count` as three big-endian u32s. At a million open
//! incidents that is ~61 fields per hash, well inside Redis' listpack encoding, so a
//! fingerprint costs ~29 bytes of `used_memory` instead of ~190 for a key of its
//! own. Every key expires one window after the last entry in it can be live. On
//! Cluster the dedup hashes take the storm scope's hash tag instead, so one script
//! reaches both in one slot. Replay-protection ids of signed webhooks are keys of
//! their own. See `docs/redis.md` for every key and its cost.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::signal::Fingerprint;
use crate::state::StormConfig;

/// Bits of the fingerprint that choose the hash.
pub const SHARD_BITS: u32 = 14;

#[derive(Clone, Debug)]
pub struct Schema {
    prefix: String,
    window_s: u32,
    cluster: bool,
}

impl Schema {
    /// On `cluster`, a signal's dedup keys share its storm scope's hash tag, so one
    /// script can touch both in one slot; elsewhere they are sharded by fingerprint,
    /// which packs fingerprints most densely.
    pub fn new(prefix: impl Into<String>, window_s: u32, cluster: bool) -> Self {
        Schema { prefix: prefix.into(), window_s: window_s.max(1), cluster }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn window_s(&self) -> u32 {
        self.window_s
    }

    pub fn cluster(&self) -> bool {
        self.cluster
    }

    /// The hash tag of a fingerprint's dedup keys: on Cluster its storm scope's,
    /// elsewhere its shard.
    pub fn dedup_tag(&self, fp: &Fingerprint, scope: Option<&[u8; 16]>) -> DedupTag {
        match scope {
            Some(scope) if self.cluster => DedupTag::Scope(*scope),
            _ => DedupTag::Shard(shard(fp)),
        }
    }

    /// The caller's bucket key of a tag, the one the dedup script is given. The
    /// script also reads the bucket before it (entries seen within the last window)
    /// and the one after (entries written by a replica whose clock runs slightly
    /// ahead), and names them from this one: only a signal that misses the caller's
    /// bucket needs them, and passing three keys per tag cost every call.
    pub fn dedup_key(&self, tag: DedupTag, now_s: u32) -> Key<'_> {
        self.key(KeyName::Dedup { tag, bucket: now_s / self.window_s })
    }

    /// The hash field naming a fingerprint: the 8 bytes after the shard's, or on
    /// Cluster (where the key does not carry the shard) 10 bytes.
    pub fn field<'f>(&self, fp: &'f Fingerprint) -> &'f [u8] {
        if self.cluster {
            &fp.as_bytes()[..10]
        } else {
            &fp.as_bytes()[2..10]
        }
    }

    /// The four keys of a storm scope: this rate window's counter, this pattern
    /// window's resource HyperLogLog, the open aggregation window and its resources.
    pub fn storm_keys(&self, scope: &[u8; 16], now_s: u32, rules: &StormConfig) -> [Key<'_>; 4] {
        [
            StormPart::Rate(now_s / rules.rate_window_s()),
            StormPart::Pattern(now_s / rules.pattern_window_s()),
            StormPart::Window,
            StormPart::WindowResources,
        ]
        .map(|part| self.key(KeyName::Storm { scope: *scope, part }))
    }

    /// A source's rate-limit key: hashed, so a hostile identity cannot make a long
    /// key, and hash-tagged on its own.
    pub fn budget_key(&self, source: &str) -> Key<'_> {
        let digest = Sha256::digest(source.as_bytes());
        self.key(KeyName::Budget(digest[..8].try_into().expect("8 of 32 bytes")))
    }

    /// A replay-protection id's key: a string set with `NX EX`, tagged with the
    /// id itself (it is only ever touched alone, so any slot will do, and the ids
    /// spread evenly over a Cluster).
    pub fn sighting_key(&self, id: &[u8; 16]) -> Key<'_> {
        self.key(KeyName::Sighting(*id))
    }

    /// An inhibit key's string (the source's request, see `inhibit_value`). Every
    /// inhibit key shares one hash tag, so that a batch's lookups are one `MGET`
    /// on Cluster too: they are few (one per open source incident and rule) and
    /// tiny, so one slot holds them all.
    pub fn inhibit_key(&self, key: &[u8; 16]) -> Key<'_> {
        self.key(KeyName::Inhibit(*key))
    }

    fn key(&self, name: KeyName) -> Key<'_> {
        Key { prefix: &self.prefix, name }
    }
}

/// A key's name, written straight into the command that carries it (no string of
/// its own: a webhook's call names dozens of keys).
#[derive(Clone, Copy, Debug)]
pub struct Key<'a> {
    prefix: &'a str,
    name: KeyName,
}

#[derive(Clone, Copy, Debug)]
enum KeyName {
    /// `<prefix>d:{<tag>}:<bucket>`
    Dedup { tag: DedupTag, bucket: u32 },
    /// `<prefix>s:{<scope>}:<part>`
    Storm { scope: [u8; 16], part: StormPart },
    /// `<prefix>r:{<source hash>}`
    Budget([u8; 8]),
    /// `<prefix>m:{<id digest>}`
    Sighting([u8; 16]),
    /// `<prefix>i:{i}:<inhibit key>`
    Inhibit([u8; 16]),
}

#[derive(Clone, Copy, Debug)]
enum StormPart {
    /// `r:<rate bucket>`
    Rate(u32),
    /// `p:<pattern bucket>`
    Pattern(u32),
    /// `w`
    Window,
    /// `wr`
    WindowResources,
}

impl Key<'_> {
    /// Spells the key into `out` piece by piece: a webhook's call names dozens of
    /// keys, and going through `fmt` cost the gateway about 6% of its CPU.
    fn spell(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        fn hex(out: &mut impl std::io::Write, b: &[u8]) -> std::io::Result<()> {
            let mut buf = [0u8; 32];
            let hex = &mut buf[..b.len() * 2];
            hex::encode_to_slice(b, hex).expect("a buffer twice the input's length");
            out.write_all(hex)
        }
        fn decimal(out: &mut impl std::io::Write, n: u32) -> std::io::Result<()> {
            out.write_all(itoa::Buffer::new().format(n).as_bytes())
        }
        out.write_all(self.prefix.as_bytes())?;
        match self.name {
            KeyName::Dedup { tag, bucket } => {
                out.write_all(b"d:{")?;
                match tag {
                    DedupTag::Shard(shard) => hex(out, &shard.to_be_bytes())?,
                    DedupTag::Scope(scope) => hex(out, &scope)?,
                }
                out.write_all(b"}:")?;
                decimal(out, bucket)
            }
            KeyName::Storm { scope, part } => {
                out.write_all(b"s:{")?;
                hex(out, &scope)?;
                match part {
                    StormPart::Rate(bucket) => {
                        out.write_all(b"}:r:")?;
                        decimal(out, bucket)
                    }
                    StormPart::Pattern(bucket) => {
                        out.write_all(b"}:p:")?;
                        decimal(out, bucket)
                    }
                    StormPart::Window => out.write_all(b"}:w"),
                    StormPart::WindowResources => out.write_all(b"}:wr"),
                }
            }
            KeyName::Budget(digest) => {
                out.write_all(b"r:{")?;
                hex(out, &digest)?;
                out.write_all(b"}")
            }
            KeyName::Sighting(id) => {
                out.write_all(b"m:{")?;
                hex(out, &id)?;
                out.write_all(b"}")
            }
            KeyName::Inhibit(key) => {
                out.write_all(b"i:{i}:")?;
                hex(out, &key)
            }
        }
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut spelled = Vec::new();
        self.spell(&mut spelled).map_err(|_| fmt::Error)?;
        f.write_str(&String::from_utf8_lossy(&spelled))
    }
}

impl redis::ToRedisArgs for Key<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // The writer appends to the command's buffer, which cannot fail.
        self.spell(&mut out.writer_for_next_arg()).expect("writing to a command buffer");
    }
}

/// What a fingerprint's dedup keys are named after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedupTag {
    Shard(u16),
    Scope([u8; 16]),
}

/// The top [`SHARD_BITS`] bits of the fingerprint.
pub fn shard(fp: &Fingerprint) -> u16 {
    let b = fp.as_bytes();
    u16::from_be_bytes([b[0], b[1]]) >> (16 - SHARD_BITS)
}

/// An inhibitor as an inhibit key's value: first seen (4 bytes, big-endian), the
/// source's fingerprint (32), the namespace's length (1), the namespace, the name.
pub fn inhibit_value(inhibitor: &crate::state::Inhibitor) -> Vec<u8> {
    let namespace = &inhibitor.namespace.as_bytes()[..inhibitor.namespace.len().min(255)];
    let mut out = Vec::with_capacity(37 + namespace.len() + inhibitor.name.len());
    out.extend_from_slice(&inhibitor.first_seen_s.to_be_bytes());
    out.extend_from_slice(inhibitor.source.as_bytes());
    out.push(namespace.len() as u8);
    out.extend_from_slice(namespace);
    out.extend_from_slice(inhibitor.name.as_bytes());
    out
}

/// What names an inhibitor's source incident in [`inhibit_value`]: its first
/// 36 bytes (epoch, fingerprint), which `release.lua` compares.
pub fn inhibit_holder(inhibitor: &crate::state::Inhibitor) -> [u8; 36] {
    let mut out = [0u8; 36];
    out[..4].copy_from_slice(&inhibitor.first_seen_s.to_be_bytes());
    out[4..].copy_from_slice(inhibitor.source.as_bytes());
    out
}

/// Reads back what [`inhibit_value`] wrote; `None` for anything else.
pub fn parse_inhibit_value(bytes: &[u8]) -> Option<crate::state::Inhibitor> {
    let first_seen_s = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
    let source = Fingerprint::from_bytes(bytes.get(4..36)?.try_into().ok()?);
    let len = *bytes.get(36)? as usize;
    let namespace = std::str::from_utf8(bytes.get(37..37 + len)?).ok()?.to_string();
    let name = std::str::from_utf8(bytes.get(37 + len..)?).ok()?.to_string();
    Some(crate::state::Inhibitor { source, first_seen_s, namespace, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::TargetResource;

    #[test]
    fn a_dedup_key_is_its_shard_and_the_callers_bucket() {
        let fp = Fingerprint::from_bytes([0xff; 32]);
        let schema = Schema::new("tg:", 300, false);
        let key = schema.dedup_key(schema.dedup_tag(&fp, Some(&[0; 16])), 300 * 10 + 5).to_string();
        assert_eq!(key, "tg:d:{3fff}:10");
    }

    #[test]
    fn storm_budget_and_cluster_keys_are_spelled_as_documented() {
        let rules = StormConfig::default();
        let scope = [0xab; 16];
        let cluster = Schema::new("tg:", 300, true);
        let fp = Fingerprint::from_bytes([0xff; 32]);
        let dedup = cluster.dedup_key(cluster.dedup_tag(&fp, Some(&scope)), 300).to_string();
        assert_eq!(dedup, format!("tg:d:{{{}}}:1", "ab".repeat(16)));
        let storm = cluster.storm_keys(&scope, 600, &rules).map(|k| k.to_string());
        let tag = format!("tg:s:{{{}}}", "ab".repeat(16));
        assert_eq!(storm, [format!("{tag}:r:10"), format!("{tag}:p:5"), format!("{tag}:w"), format!("{tag}:wr")]);
        let budget = cluster.budget_key("10.0.0.1").to_string();
        assert!(budget.starts_with("tg:r:{") && budget.ends_with('}') && budget.len() == "tg:r:{}".len() + 16);
        let sighting = cluster.sighting_key(&[0xcd; 16]).to_string();
        assert_eq!(sighting, format!("tg:m:{{{}}}", "cd".repeat(16)));
        let inhibit = cluster.inhibit_key(&[0xef; 16]).to_string();
        assert_eq!(inhibit, format!("tg:i:{{i}}:{}", "ef".repeat(16)));
    }

    #[test]
    fn field_and_shard_come_from_disjoint_bytes() {
        let fp = Fingerprint::new("a", "b", &TargetResource::default());
        assert!(shard(&fp) < 1 << SHARD_BITS);
        assert_eq!(Schema::new("tg:", 300, false).field(&fp), &fp.as_bytes()[2..10]);
        for (cluster, bytes) in [(false, 8), (true, 10)] {
            assert_eq!(Schema::new("tg:", 300, cluster).field(&fp).len(), bytes, "decide.lua's field length");
        }
    }

    #[test]
    fn an_inhibit_value_reads_back_and_nothing_else_does() {
        let inhibitor = crate::state::Inhibitor {
            source: Fingerprint::from_bytes([7; 32]),
            first_seen_s: 1_800_000_000,
            namespace: "tidegate-system".into(),
            name: "kubenodenotready-070707070707-s44we8".into(),
        };
        assert_eq!(parse_inhibit_value(&inhibit_value(&inhibitor)), Some(inhibitor.clone()));
        assert_eq!(inhibit_value(&inhibitor)[..36], inhibit_holder(&inhibitor), "what release.lua compares");
        assert_eq!(parse_inhibit_value(b"short"), None);
    }
}
