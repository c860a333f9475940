//! The Redis key schema: where each fingerprint's 12 bytes live.
//!
//! `<prefix>d:{<shard>}:<bucket>` is a hash. The shard is the top 14 bits of the
//! fingerprint (16,384 shards, 4 hex digits inside a hash tag, so every bucket of a
//! shard sits in one Cluster slot); the bucket is `floor(last_seen / window)`. The
//! field is the next 8 bytes of the fingerprint and the value is
//! `first_seen, last_seen, count` as three big-endian u32s. At a million open
//! incidents that is ~61 fields per hash, well inside Redis' listpack encoding, so a
//! fingerprint costs ~29 bytes of `used_memory` instead of ~190 for a key of its
//! own. Every key expires one window after the last entry in it can be live.
//! See `docs/redis.md` for the measurements.

use crate::signal::Fingerprint;

/// Bits of the fingerprint that choose the hash.
pub const SHARD_BITS: u32 = 14;

#[derive(Clone, Debug)]
pub struct Schema {
    prefix: String,
    window_s: u32,
}

impl Schema {
    pub fn new(prefix: impl Into<String>, window_s: u32) -> Self {
        Schema {
            prefix: prefix.into(),
            window_s: window_s.max(1),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn window_s(&self) -> u32 {
        self.window_s
    }

    /// The three bucket keys the dedup script reads: the caller's bucket, the one
    /// before (entries seen within the last window) and the one after (entries
    /// written by a replica whose clock runs slightly ahead).
    pub fn dedup_keys(&self, fp: &Fingerprint, now_s: u32) -> [String; 3] {
        let bucket = now_s / self.window_s;
        let shard = shard(fp);
        let key = |b: u32| format!("{}d:{{{shard:04x}}}:{b}", self.prefix);
        [key(bucket), key(bucket.saturating_sub(1)), key(bucket + 1)]
    }

    /// A SCAN pattern matching every key tidegate owns.
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }
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
        let keys = Schema::new("tg:", 300).dedup_keys(&fp, 300 * 10 + 5);
        assert_eq!(keys, ["tg:d:{3fff}:10", "tg:d:{3fff}:9", "tg:d:{3fff}:11"]);
    }

    #[test]
    fn field_and_shard_come_from_disjoint_bytes() {
        let fp = Fingerprint::new("a", "b", &TargetResource::default());
        assert!(shard(&fp) < 1 << SHARD_BITS);
        assert_eq!(&field(&fp)[..], &fp.as_bytes()[2..10]);
    }
}
