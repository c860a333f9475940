//! The codec of `decide.lua`, the Redis Functions library beside this file: how a
//! batch becomes one call per node (its keys, each once, and its one packed
//! argument), and how the function's packed replies become a [`Decision`].
//!
//! The layout written here and the one `decide.lua` reads must agree byte for byte;
//! the script's header comment, [`DecideCall::new`] and [`Record`] describe the same
//! structs. Nothing here talks to Redis. Replicas of two versions share Redis
//! during an upgrade, but each calls its own library (the name carries a digest of
//! the code), so this layout may change between versions; what is stored in Redis
//! may not.

use redis::Value;

use super::schema::{DedupTag, Key};
use crate::state::{
    Charge, Decision, Entry, FlapRule, Folded, OpenWindow, StateError, StormConfig, StormKind, Verdict,
};

/// One invocation of `decide.lua`: each key it touches once, and its argument.
pub(super) struct DecideCall<'a> {
    /// The dedup tag all of this call's keys share on Cluster; `None` on a single
    /// node, where one call carries the whole batch.
    pub(super) slot: Option<DedupTag>,
    pub(super) keys: Vec<Key<'a>>,
    /// Where each group of keys starts in `keys`, as a Lua (1-based) index.
    groups: Vec<(Group, u32)>,
    /// The one argument: the header, then (after [`DecideCall::seal`]) the records.
    packed: Vec<u8>,
    /// The observations' records, packed by [`DecideCall::seal`].
    records: Vec<Record<'a>>,
    /// Positions in the batch of the observations it decides, in order.
    pub(super) members: Vec<usize>,
}

/// A group of keys one or more observations of a call share.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    Dedup(DedupTag),
    Storm([u8; 16]),
}

impl<'a> DecideCall<'a> {
    /// A call whose header carries the rules, the flap rule and, if given, the
    /// request's charge against its budget key (then `KEYS[1]`): struct
    /// `>I4I4I4I4I4I4I4I4I4I4BI8I8I8B` (see `decide.lua`), the fields' length last
    /// (set by [`Self::seal`]).
    pub(super) fn new(
        slot: Option<DedupTag>,
        now_s: u32,
        window_s: u32,
        rules: &StormConfig,
        flap: FlapRule,
        charge: Option<(Key<'a>, Charge<'_>)>,
    ) -> Self {
        let mut packed = Vec::with_capacity(HEADER_BYTES);
        for n in [
            now_s,
            window_s,
            rules.rate_threshold,
            rules.rate_window_s(),
            rules.pattern_threshold,
            rules.pattern_window_s(),
            rules.inactivity_s(),
            rules.max_duration_s(),
            flap.window_s,
            flap.keep,
        ] {
            packed.extend_from_slice(&n.to_be_bytes());
        }
        let mut keys = Vec::new();
        let charged = match charge {
            Some((budget, c)) => {
                keys.push(budget);
                [c.now_ms, c.limit.emission_interval_ms(), c.limit.tolerance_ms()]
            }
            None => [0; 3],
        };
        packed.push(u8::from(charge.is_some()));
        for n in charged {
            packed.extend_from_slice(&n.to_be_bytes());
        }
        packed.push(0);
        debug_assert_eq!(packed.len(), HEADER_BYTES);
        DecideCall { slot, keys, groups: Vec::new(), packed, records: Vec::new(), members: Vec::new() }
    }

    /// The index of `group`'s first key, adding its keys on first use.
    pub(super) fn intern<const N: usize>(&mut self, group: Group, keys: impl FnOnce() -> [Key<'a>; N]) -> u32 {
        if let Some(&(_, at)) = self.groups.iter().find(|(g, _)| *g == group) {
            return at;
        }
        let at = self.keys.len() as u32 + 1;
        self.keys.extend(keys());
        self.groups.push((group, at));
        at
    }

    /// Adds the observation at `position` of the batch.
    pub(super) fn push(&mut self, record: Record<'a>, position: usize) {
        self.records.push(record);
        self.members.push(position);
    }

    /// Packs the records into the call's one argument, once they are all pushed: a firing
    /// record with storm keys carries its scope's firing records in this call (the
    /// script charges a scope's rate counter once per call, before its first).
    pub(super) fn seal(&mut self) {
        // Every field of a call has one length, the schema's.
        let field_bytes = self.records.first().map_or(0, |r| r.field.len());
        debug_assert!(self.records.iter().all(|r| r.field.len() == field_bytes));
        self.packed[HEADER_BYTES - 1] = field_bytes as u8;
        self.packed.reserve(self.records.len() * (RECORD_BYTES + field_bytes));
        let firing = |r: &Record| matches!(r.mode, Mode::Fire) && r.storm_at > 0;
        // (storm keys' index, firing records), one per scope: a call has few.
        let mut scopes: Vec<(u32, u32)> = Vec::new();
        for r in self.records.iter().filter(|r| firing(r)) {
            match scopes.iter_mut().find(|(at, _)| *at == r.storm_at) {
                Some((_, n)) => *n += 1,
                None => scopes.push((r.storm_at, 1)),
            }
        }
        for r in &self.records {
            let mut r = *r;
            if firing(&r) {
                r.adopt.1 = scopes.iter().find(|(at, _)| *at == r.storm_at).map_or(0, |&(_, n)| n);
            }
            r.pack_into(&mut self.packed);
        }
        self.records.clear();
    }

    /// The function's one argument.
    pub(super) fn packed(&self) -> &[u8] {
        &self.packed
    }
}

/// Bytes of the call's header and of a record without its field (`decide.lua`'s
/// `HEADER_BYTES` and `RECORD_BYTES`).
const HEADER_BYTES: usize = 66;
const RECORD_BYTES: usize = 25;

/// What `decide.lua` is asked about one observation.
#[derive(Clone, Copy)]
pub(super) enum Mode {
    Fire = 0,
    Resolve = 1,
    Adopt = 2,
    /// `decide.lua` reads the window's kind off the mode: 1 rate, 2 pattern.
    AdoptRateWindow = 3,
    AdoptPatternWindow = 4,
    /// Looked up as `Resolve` is, and answered as an acknowledgement.
    Acknowledge = 5,
}

/// What an authority told the store to take back.
#[derive(Clone, Copy)]
pub(super) enum Adoption {
    Entry(Entry),
    Window(OpenWindow),
}

/// One observation's record in `decide.lua`'s argument: struct `>BI4I4I4I4c8`, then
/// the field.
#[derive(Clone, Copy)]
pub(super) struct Record<'a> {
    pub(super) mode: Mode,
    /// Lua indices of its dedup key and first storm key (0: none).
    pub(super) dedup_at: u32,
    pub(super) storm_at: u32,
    /// First seen and count, for an adoption; for a firing record with storm keys,
    /// 0 and its scope's firing records in the call (set by [`DecideCall::seal`]).
    pub(super) adopt: (u32, u32),
    pub(super) resource: [u8; 8],
    pub(super) field: &'a [u8],
}

impl Record<'_> {
    fn pack_into(&self, out: &mut Vec<u8>) {
        out.push(self.mode as u8);
        for n in [self.dedup_at, self.storm_at, self.adopt.0, self.adopt.1] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.resource);
        out.extend_from_slice(self.field);
    }
}

pub(super) fn bad_reply(script: &'static str, what: String) -> StateError {
    StateError::Reply { script, what }
}

/// Bytes of the admission that starts each of `decide.lua`'s replies, and of each
/// verdict after it: two and six big-endian u32s.
const ADMISSION_BYTES: usize = 8;
const VERDICT_BYTES: usize = 24;

/// Decodes `decide.lua`'s replies, one per call, into a decision on a batch of
/// `len`; `members` are, per call, the positions in the batch it decided. Public
/// (hidden) for the fuzz targets only, which feed it hostile replies.
#[doc(hidden)]
pub fn decode<'m>(
    len: usize,
    members: impl IntoIterator<Item = &'m [usize]>,
    replies: Vec<Value>,
) -> Result<Decision, StateError> {
    let members: Vec<&[usize]> = members.into_iter().collect();
    // One reply per call, or a call's admission went unread (fuzzing found a charge
    // with no reply decided as allowed).
    if replies.len() != members.len() {
        return Err(bad_reply("decide", format!("{} replies for {} calls", replies.len(), members.len())));
    }
    let mut verdicts: Vec<Option<Verdict>> = vec![None; len];
    for (members, reply) in members.into_iter().zip(replies) {
        let Value::BulkString(packed) = reply else {
            return Err(bad_reply("decide", format!("{reply:?}")));
        };
        let (admission, packed) = packed.split_at_checked(ADMISSION_BYTES).unwrap_or((&[][..], &[][..]));
        match words(admission) {
            Some([1, 0]) => {}
            // A limited call did nothing else, so its reply holds nothing else.
            Some([0, retry]) if packed.is_empty() => return Ok(Decision::Limited { retry_after_ms: retry.into() }),
            _ => return Err(bad_reply("decide", format!("admission {admission:?}"))),
        }
        if packed.len() != VERDICT_BYTES * members.len() {
            return Err(bad_reply("decide", format!("{} bytes for {} signals", packed.len(), members.len())));
        }
        for (&m, bytes) in members.iter().zip(packed.chunks_exact(VERDICT_BYTES)) {
            verdicts[m] = Some(verdict(bytes)?);
        }
    }
    verdicts
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .map(Decision::Decided)
        .ok_or_else(|| bad_reply("decide", "no answer".into()))
}

/// `N` big-endian u32s, if `bytes` holds exactly that many.
fn words<const N: usize>(bytes: &[u8]) -> Option<[u32; N]> {
    let words: &[[u8; 4]] = bytes.as_chunks().0;
    (bytes.len() == 4 * N).then(|| std::array::from_fn(|i| u32::from_be_bytes(words[i])))
}

/// Decodes one verdict of `decide.lua`'s reply.
fn verdict(bytes: &[u8]) -> Result<Verdict, StateError> {
    let f: [u32; VERDICT_BYTES / 4] = words(bytes).ok_or_else(|| bad_reply("decide", format!("verdict {bytes:?}")))?;
    let entry = Entry { first_seen_s: f[1], last_seen_s: f[2], count: f[3] };
    Ok(match f[0] {
        // The fifth word of a firing incident's verdict: its flap transitions.
        0 | 1 if f[4] > 0 => Verdict::Refired { entry, opened: f[0] == 0, transitions: f[4] },
        0 => Verdict::New(entry),
        1 => Verdict::Duplicate(entry),
        2 => Verdict::ResolvedOpen(entry),
        3 => Verdict::ResolvedUnknown,
        6 => Verdict::AcknowledgedOpen(entry),
        7 => Verdict::AcknowledgedUnknown,
        5 => Verdict::Folded(Folded {
            window_id: f[1],
            kind: if f[2] == 2 { StormKind::Pattern } else { StormKind::Rate },
            alert_count: f[3],
            resource_count: f[4],
            opened: f[5] == 1,
        }),
        _ => return Err(bad_reply("decide", format!("{f:?}"))),
    })
}
