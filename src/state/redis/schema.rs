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
//! reaches both in one slot. See `docs/redis.md` for every key and its cost.

use sha2::{Digest, Sha256};

use crate::signal::Fingerprint;
use crate::state::StormRules;

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

    /// The three bucket keys the dedup script reads for a tag: the caller's bucket,
    /// the one before (entries seen within the last window) and the one after
    /// (entries written by a replica whose clock runs slightly ahead).
    pub fn dedup_keys(&self, tag: DedupTag, now_s: u32) -> [String; 3] {
        let bucket = now_s / self.window_s;
        let tag = match tag {
            DedupTag::Scope(scope) => hex::encode(scope),
            DedupTag::Shard(shard) => format!("{shard:04x}"),
        };
        let key = |b: u32| format!("{}d:{{{tag}}}:{b}", self.prefix);
        [key(bucket), key(bucket.saturating_sub(1)), key(bucket + 1)]
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
    pub fn storm_keys(&self, scope: &[u8; 16], now_s: u32, rules: &StormRules) -> [String; 4] {
        let tag = format!("{}s:{{{}}}", self.prefix, hex::encode(scope));
        [
            format!("{tag}:r:{}", now_s / rules.rate_window_s),
            format!("{tag}:p:{}", now_s / rules.pattern_window_s),
            format!("{tag}:w"),
            format!("{tag}:wr"),
        ]
    }

    /// A source's rate-limit key: hashed, so a hostile identity cannot make a long
    /// key, and hash-tagged on its own.
    pub fn budget_key(&self, source: &str) -> String {
        let digest = Sha256::digest(source.as_bytes());
        format!("{}r:{{{}}}", self.prefix, hex::encode(&digest[..8]))
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

/// The hash field: the 8 bytes after the shard's.
pub fn field(fp: &Fingerprint) -> [u8; 8] {
    fp.as_bytes()[2..10].try_into().expect("8 of 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::TargetResource;

    #[test]
    fn keys_share_one_hash_tag_and_name_adjacent_buckets() {
        let fp = Fingerprint::from_bytes([0xff; 32]);
        let schema = Schema::new("tg:", 300, false);
        let keys = schema.dedup_keys(schema.dedup_tag(&fp, Some(&[0; 16])), 300 * 10 + 5);
        assert_eq!(keys, ["tg:d:{3fff}:10", "tg:d:{3fff}:9", "tg:d:{3fff}:11"]);
    }

    #[test]
    fn field_and_shard_come_from_disjoint_bytes() {
        let fp = Fingerprint::new("a", "b", &TargetResource::default());
        assert!(shard(&fp) < 1 << SHARD_BITS);
        assert_eq!(&field(&fp)[..], &fp.as_bytes()[2..10]);
    }
}
