//! The Redis state backend: dedup state shared by every replica.
//!
//! One server-side script (`decide.lua`) decides a whole batch atomically, in
//! order, after charging the request's rate limit: on a single node a webhook costs
//! one `EVALSHA`, one network round trip (on Cluster, one concurrent call per storm
//! scope, and the charge on its own). What is stored is fixed-size metadata only
//! (see [`schema`]): never a signal, never a request.
//!
//! Failure policy: any error (OOM under `noeviction`, unreachable, slower than
//! `redis.timeout`) is a [`StateError`], answered 503 with `Retry-After`; an OOM
//! also turns readiness off until Redis has room again. The connection recovers
//! by itself when Redis comes back.

pub mod connection;
pub mod doctor;
pub mod info;
mod monitor;
pub mod schema;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Script, Value};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::future::Future;

use super::{
    Admission, BoxFuture, Charge, Decision, Entry, Folded, Observation, OpenWindow, RateLimit, StateError, StateStore,
    StormConfig, StormKind, Verdict,
};
use crate::section::ConfigError;
use crate::signal::SignalStatus;
use crate::telemetry::Metrics;
pub use connection::TlsFiles;
use connection::{Connection, Handle, Topology};
pub use monitor::risks;
use schema::{DedupTag, Key, Schema};

const DECIDE: &str = include_str!("decide.lua");
/// Defines the `gcra` function that both scripts start with.
const GCRA: &str = include_str!("gcra.lua");

/// The scripts' sources. The `#!lua` shebang (no flags) makes Redis 7 treat a
/// script as "may write", so under `maxmemory` with noeviction a whole call is
/// refused with OOM before it runs: never a partial write.
fn scripts() -> (Script, Script) {
    let decide = format!("#!lua\n{GCRA}\n{DECIDE}");
    let gcra = format!(
        "#!lua\n{GCRA}\n\
         local allowed, retry = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n\
         return {{allowed, retry}}\n"
    );
    (Script::new(&decide), Script::new(&gcra))
}

/// `redis`: the Redis backend, used when `state` is a Redis URL.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// Every key tidegate writes starts with this; replicas sharing state must use
    /// the same prefix.
    pub prefix: String,
    /// A Redis call slower than this is answered 503 and retried by the sender.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How often Redis memory and key gauges are refreshed.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub monitor_interval: Duration,
    /// PEM files for a `rediss…` state URL; unset, the system's trust store.
    pub tls: TlsFiles,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            prefix: "tg:".into(),
            timeout: Duration::from_secs(1),
            monitor_interval: Duration::from_secs(15),
            tls: TlsFiles::default(),
        }
    }
}

impl RedisConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason| Err(ConfigError::invalid(key, reason));
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            return invalid("redis.prefix", "must be non-empty and free of '{' and '}' (they are Cluster hash tags)");
        }
        if self.timeout < Duration::from_millis(10) {
            return invalid("redis.timeout", "must be at least 10ms");
        }
        if self.monitor_interval < Duration::from_secs(1) {
            return invalid("redis.monitor_interval", "must be at least 1s");
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return invalid("redis.tls", "cert_file and key_file go together");
        }
        Ok(())
    }
}

pub struct RedisStore {
    shared: Arc<Shared>,
    warnings: Vec<String>,
}

struct Shared {
    conn: Connection,
    schema: Schema,
    storms: StormConfig,
    decide: Script,
    gcra: Script,
    timeout: Duration,
    /// Set when Redis refused a write for lack of memory; cleared once it has room.
    out_of_memory: AtomicBool,
    /// Fingerprints held, as last counted by the monitor.
    entries: AtomicU64,
}

impl RedisStore {
    /// Connects, loads the script, checks the eviction policy and starts the
    /// monitor that exports Redis memory gauges.
    pub async fn connect(
        topology: &Topology,
        config: &RedisConfig,
        window: Duration,
        storms: &StormConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StateError> {
        let certs = config.tls.load().map_err(StateError::Tls)?;
        let conn = Connection::open(topology, config.timeout, certs.as_ref()).await.map_err(StateError::Unavailable)?;
        let (decide, gcra) = scripts();
        let shared = Arc::new(Shared {
            conn,
            schema: Schema::new(
                config.prefix.clone(),
                window.as_secs() as u32,
                matches!(topology, Topology::Cluster { .. }),
            ),
            storms: *storms,
            decide,
            gcra,
            timeout: config.timeout,
            out_of_memory: AtomicBool::new(false),
            entries: AtomicU64::new(0),
        });
        let warnings = monitor::eviction_warnings(&shared.conn).await;
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        tokio::spawn(monitor::run(Arc::downgrade(&shared), metrics, config.monitor_interval));
        Ok(RedisStore { shared, warnings })
    }

    /// What start-up found risky in Redis' memory configuration.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

impl Shared {
    /// Runs `work` under the timeout, classifying failures and tracking OOM.
    async fn guarded<T>(&self, work: impl Future<Output = Result<T, RedisError>>) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => {
                self.out_of_memory.store(false, Ordering::Relaxed);
                Ok(value)
            }
            Ok(Err(e)) => {
                self.conn.failed(&e).await;
                Err(self.classify(&e))
            }
            Err(_) => Err(StateError::Timeout(self.timeout)),
        }
    }

    async fn observe(&self, batch: &[Observation], now_s: u32) -> Result<Vec<Verdict>, StateError> {
        match self.guarded(self.decide(batch, now_s, None, None)).await?? {
            Decision::Decided(verdicts) => Ok(verdicts),
            Decision::Limited { .. } => Err(bad_reply("decide", "limited an uncharged batch".into())),
        }
    }

    /// The request's charge and its batch in one call; single node only (on Cluster
    /// the budget key lives in a slot of its own).
    async fn admit_and_observe(
        &self,
        charge: Charge<'_>,
        batch: &[Observation],
        now_s: u32,
    ) -> Result<Decision, StateError> {
        self.guarded(self.decide(batch, now_s, None, Some(charge))).await?
    }

    /// Decides `batch` with `decide.lua`: one call for the whole batch on a single
    /// node, one per slot (concurrently) on Cluster. `adopt` turns every observation
    /// into an adoption of that entry or window; `charge` (single node only) is
    /// applied first.
    async fn decide(
        &self,
        batch: &[Observation],
        now_s: u32,
        adopt: Option<Adoption>,
        charge: Option<Charge<'_>>,
    ) -> Result<Result<Decision, StateError>, RedisError> {
        let rules = &self.storms;
        let window_s = self.schema.window_s();
        let mut calls: Vec<DecideCall> = Vec::new();
        if let Some(charge) = charge {
            debug_assert!(!self.schema.cluster(), "the budget key has a slot of its own");
            let budget = self.schema.budget_key(charge.source);
            calls.push(DecideCall::new(None, now_s, window_s, rules, Some((budget, charge))));
        }
        for (position, o) in batch.iter().enumerate() {
            let scope = o.storm.as_ref().map(|k| &k.scope);
            let tag = self.schema.dedup_tag(&o.fingerprint, scope);
            // On Cluster, every key of an observation shares its dedup tag's slot.
            let slot = self.schema.cluster().then_some(tag);
            let call = match calls.iter().position(|c| c.slot == slot) {
                Some(i) => &mut calls[i],
                None => {
                    calls.push(DecideCall::new(slot, now_s, window_s, rules, None));
                    calls.last_mut().expect("just pushed")
                }
            };
            let d = call.intern(Group::Dedup(tag), || self.schema.dedup_keys(tag, now_s));
            let storm = match (o.status, &o.storm, adopt) {
                (SignalStatus::Firing, Some(key), None | Some(Adoption::Window(_))) => Some(key),
                _ => None,
            };
            let s = match storm {
                Some(key) => call.intern(Group::Storm(key.scope), || self.schema.storm_keys(&key.scope, now_s, rules)),
                None => 0,
            };
            let (mode, adopted) = match (adopt, o.status) {
                (Some(Adoption::Entry(e)), _) => (Mode::Adopt, (e.first_seen_s, e.count)),
                (Some(Adoption::Window(w)), _) => match w.kind {
                    StormKind::Rate => (Mode::AdoptRateWindow, (w.id, w.alerts)),
                    StormKind::Pattern => (Mode::AdoptPatternWindow, (w.id, w.alerts)),
                },
                (None, SignalStatus::Firing) => (Mode::Fire, (0, 0)),
                (None, SignalStatus::Resolved) => (Mode::Resolve, (0, 0)),
            };
            let record = Record {
                mode,
                dedup_at: d,
                storm_at: s,
                adopt: adopted,
                resource: storm.map_or([0; 8], |k| k.resource),
                field: self.schema.field(&o.fingerprint),
            };
            call.args.push(Arg::Record(record.pack()));
            call.members.push(position);
        }
        let replies = self.run(&self.decide, &calls).await?;
        Ok(decode(batch.len(), calls.iter().map(|c| c.members.as_slice()), replies))
    }

    /// Runs one script invocation per call: one pipeline on a single node,
    /// concurrent invocations on Cluster.
    async fn run(&self, script: &Script, calls: &[DecideCall<'_>]) -> Result<Vec<Value>, RedisError> {
        match self.conn.handle() {
            Handle::Single(mut conn) => {
                let mut pipe = redis::pipe();
                for call in calls {
                    pipe.cmd("EVALSHA")
                        .arg(script.get_hash())
                        .arg(call.keys.len())
                        .arg(&call.keys[..])
                        .arg(&call.args[..]);
                }
                match pipe.query_async::<Vec<Value>>(&mut conn).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        // Redis restarted or failed over and lost its script cache.
                        script.load_async(&mut conn).await?;
                        pipe.query_async(&mut conn).await
                    }
                    other => other,
                }
            }
            Handle::Cluster(conn) => {
                let invocations = calls.iter().map(|call| {
                    let mut conn = conn.clone();
                    let mut inv = script.prepare_invoke();
                    inv.key(&call.keys[..]).arg(&call.args[..]);
                    async move { inv.invoke_async::<Value>(&mut conn).await }
                });
                futures::future::join_all(invocations).await.into_iter().collect()
            }
        }
    }

    async fn adopt(&self, o: &Observation, entry: Entry, now_s: u32) -> Result<(), StateError> {
        self.guarded(self.decide(std::slice::from_ref(o), now_s, Some(Adoption::Entry(entry)), None)).await??;
        Ok(())
    }

    async fn adopt_window(&self, o: &Observation, window: OpenWindow, now_s: u32) -> Result<Folded, StateError> {
        if o.storm.is_none() || o.status != SignalStatus::Firing {
            return Err(StateError::Misuse("an adopted window needs a firing alert with a storm scope"));
        }
        let adopt = Some(Adoption::Window(window));
        match self.guarded(self.decide(std::slice::from_ref(o), now_s, adopt, None)).await?? {
            Decision::Decided(verdicts) => match verdicts[..] {
                [Verdict::Folded(folded)] => Ok(folded),
                _ => Err(bad_reply("decide", format!("{verdicts:?} for an adopted window"))),
            },
            Decision::Limited { .. } => Err(bad_reply("decide", "limited an uncharged adoption".into())),
        }
    }

    async fn admit(&self, source: &str, limit: RateLimit, now_ms: u64) -> Result<Admission, StateError> {
        let key = self.schema.budget_key(source);
        let args = [now_ms, limit.emission_interval_ms(), limit.tolerance_ms()];
        let reply = self
            .guarded(async {
                let mut invocation = self.gcra.prepare_invoke();
                invocation.key(key).arg(&args[..]);
                self.conn.invoke::<Value>(&invocation).await
            })
            .await?;
        let bad = |what: String| bad_reply("rate-limit", what);
        let fields: Vec<i64> = redis::from_redis_value(reply)
            .map_err(|source| StateError::ReplyType { script: "rate-limit", source: source.into() })?;
        match fields[..] {
            [1, _] => Ok(Admission::Allowed),
            [0, retry] => Ok(Admission::Limited { retry_after_ms: retry.max(0) as u64 }),
            _ => Err(bad(format!("{fields:?}"))),
        }
    }

    /// `SET <id key> 1 NX EX <ttl>`: set only if absent, so exactly one replica
    /// sees a given id first.
    async fn first_sighting(&self, id: [u8; 16], ttl: Duration) -> Result<bool, StateError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.schema.sighting_key(&id)).arg(1).arg("NX").arg("EX").arg(ttl.as_secs().max(1));
        let reply: Value = self.guarded(self.conn.query(&cmd)).await?;
        Ok(matches!(reply, Value::Okay))
    }

    async fn forget_sighting(&self, id: [u8; 16]) -> Result<(), StateError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.schema.sighting_key(&id));
        self.guarded(self.conn.query::<()>(&cmd)).await
    }

    fn classify(&self, e: &RedisError) -> StateError {
        if is_oom(e) {
            self.out_of_memory.store(true, Ordering::Relaxed);
            StateError::OutOfMemory(e.clone())
        } else if e.is_timeout() {
            StateError::Timeout(self.timeout)
        } else {
            StateError::Unavailable(e.clone())
        }
    }

    async fn ping(&self) -> Result<(), StateError> {
        // After an OOM refusal, stay unready until Redis has room again, even with
        // no traffic to prove it.
        let probe = async {
            let _: () = self.conn.query(&redis::cmd("PING")).await?;
            let full = self.out_of_memory.load(Ordering::Relaxed) && monitor::is_full(&self.conn).await?;
            Ok::<bool, RedisError>(full)
        };
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(Ok(false)) => {
                self.out_of_memory.store(false, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(true)) => Err(StateError::AtMaxmemory),
            Ok(Err(e)) => {
                self.conn.failed(&e).await;
                Err(self.classify(&e))
            }
            Err(_) => Err(StateError::Timeout(self.timeout)),
        }
    }
}

/// Whether Redis refused for lack of memory, alone or inside a pipeline.
fn is_oom(e: &RedisError) -> bool {
    match e.clone().into_server_errors() {
        Some(errors) => errors.iter().any(|(_, err)| err.code() == "OOM"),
        None => e.code() == Some("OOM"),
    }
}

/// One invocation of `decide.lua`: each key it touches once, and its arguments.
struct DecideCall<'a> {
    /// The dedup tag all of this call's keys share on Cluster; `None` on a single
    /// node, where one call carries the whole batch.
    slot: Option<DedupTag>,
    keys: Vec<Key<'a>>,
    /// Where each group of keys starts in `keys`, as a Lua (1-based) index.
    groups: Vec<(Group, u32)>,
    args: Vec<Arg<'a>>,
    /// Positions in the batch of the observations it decides, in order.
    members: Vec<usize>,
}

/// A group of keys one or more observations of a call share.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Group {
    Dedup(DedupTag),
    Storm([u8; 16]),
}

impl<'a> DecideCall<'a> {
    /// A call whose header carries the rules and, if given, the request's charge
    /// against its budget key (then `KEYS[1]`).
    fn new(
        slot: Option<DedupTag>,
        now_s: u32,
        window_s: u32,
        rules: &StormConfig,
        charge: Option<(Key<'a>, Charge<'_>)>,
    ) -> Self {
        let header = [
            now_s,
            window_s,
            rules.rate_threshold,
            rules.rate_window_s(),
            rules.pattern_threshold,
            rules.pattern_window_s(),
            rules.inactivity_s(),
            rules.max_duration_s(),
        ]
        .map(|n| Arg::Int(n.into()));
        let mut call =
            DecideCall { slot, keys: Vec::new(), groups: Vec::new(), args: header.into(), members: Vec::new() };
        match charge {
            Some((budget, c)) => {
                call.keys.push(budget);
                call.args.extend([c.now_ms, c.limit.emission_interval_ms(), c.limit.tolerance_ms()].map(Arg::Int));
            }
            None => call.args.extend([Arg::Bytes(b""); 3]),
        }
        call
    }

    /// The index of `group`'s first key, adding its keys on first use.
    fn intern<const N: usize>(&mut self, group: Group, keys: impl FnOnce() -> [Key<'a>; N]) -> u32 {
        if let Some(&(_, at)) = self.groups.iter().find(|(g, _)| *g == group) {
            return at;
        }
        let at = self.keys.len() as u32 + 1;
        self.keys.extend(keys());
        self.groups.push((group, at));
        at
    }
}

/// A script argument, written without an intermediate allocation.
#[derive(Clone, Copy)]
enum Arg<'a> {
    Int(u64),
    Bytes(&'a [u8]),
    Record(Packed),
}

impl redis::ToRedisArgs for Arg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        match self {
            Arg::Int(n) => n.write_redis_args(out),
            Arg::Bytes(b) => b.write_redis_args(out),
            Arg::Record(packed) => out.write_arg(&packed.bytes[..packed.len]),
        }
    }
}

/// What `decide.lua` is asked about one observation.
#[derive(Clone, Copy)]
enum Mode {
    Fire = 0,
    Resolve = 1,
    Adopt = 2,
    /// `decide.lua` reads the window's kind off the mode: 1 rate, 2 pattern.
    AdoptRateWindow = 3,
    AdoptPatternWindow = 4,
}

/// What an authority told the store to take back.
#[derive(Clone, Copy)]
enum Adoption {
    Entry(Entry),
    Window(OpenWindow),
}

/// One observation's argument to `decide.lua`: struct `>BI4I4I4I4c8`, then the field.
struct Record<'a> {
    mode: Mode,
    /// Lua indices of its first dedup key and first storm key (0: none).
    dedup_at: u32,
    storm_at: u32,
    /// First seen and count, for an adoption.
    adopt: (u32, u32),
    resource: [u8; 8],
    field: &'a [u8],
}

/// A packed [`Record`]: 25 bytes and a field of at most 10.
#[derive(Clone, Copy)]
struct Packed {
    bytes: [u8; 35],
    len: usize,
}

impl Record<'_> {
    fn pack(&self) -> Packed {
        let mut bytes = [0u8; 35];
        let fixed = [
            &[self.mode as u8][..],
            &self.dedup_at.to_be_bytes(),
            &self.storm_at.to_be_bytes(),
            &self.adopt.0.to_be_bytes(),
            &self.adopt.1.to_be_bytes(),
            &self.resource,
            self.field,
        ];
        let mut len = 0;
        for part in fixed {
            bytes[len..len + part.len()].copy_from_slice(part);
            len += part.len();
        }
        Packed { bytes, len }
    }
}

fn bad_reply(script: &'static str, what: String) -> StateError {
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
        0 => Verdict::New(entry),
        1 => Verdict::Duplicate(entry),
        2 => Verdict::ResolvedOpen(entry),
        3 => Verdict::ResolvedUnknown,
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

impl StateStore for RedisStore {
    fn adopt<'a>(&'a self, o: &'a Observation, entry: Entry, now_s: u32) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(self.shared.adopt(o, entry, now_s))
    }

    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>> {
        Box::pin(self.shared.observe(batch, now_s))
    }

    fn adopt_window<'a>(
        &'a self,
        o: &'a Observation,
        window: OpenWindow,
        now_s: u32,
    ) -> BoxFuture<'a, Result<Folded, StateError>> {
        Box::pin(self.shared.adopt_window(o, window, now_s))
    }

    fn admit_and_observe<'a>(
        &'a self,
        charge: Charge<'a>,
        batch: &'a [Observation],
        now_s: u32,
    ) -> BoxFuture<'a, Result<Decision, StateError>> {
        if self.shared.schema.cluster() {
            return Box::pin(super::admit_then_observe(self, charge, batch, now_s));
        }
        Box::pin(self.shared.admit_and_observe(charge, batch, now_s))
    }

    fn admit<'a>(
        &'a self,
        source: &'a str,
        limit: RateLimit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, StateError>> {
        Box::pin(self.shared.admit(source, limit, now_ms))
    }

    fn first_sighting(&self, id: [u8; 16], ttl: Duration) -> BoxFuture<'_, Result<bool, StateError>> {
        Box::pin(self.shared.first_sighting(id, ttl))
    }

    fn forget_sighting(&self, id: [u8; 16]) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.shared.forget_sighting(id))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.shared.ping())
    }

    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(async move { Ok(self.shared.entries.load(Ordering::Relaxed)) })
    }
}
