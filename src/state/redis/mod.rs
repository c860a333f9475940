//! The Redis state backend: dedup state shared by every replica.
//!
//! One server-side function (`decide.lua`, a Redis Functions library) decides a
//! whole batch atomically, in order, after charging the request's rate limit: on a
//! single node a webhook costs one `FCALL`, one network round trip (on Cluster, one
//! concurrent call per storm scope, and the charge on its own). What is stored is
//! fixed-size metadata only (see [`schema`]): never a signal, never a request.
//!
//! Failure policy: any error (OOM under `noeviction`, unreachable, slower than
//! `redis.timeout`) is a [`StateError`], answered 503 with `Retry-After`; an OOM
//! also turns readiness off until Redis has room again. The connection recovers
//! by itself when Redis comes back.

pub mod connection;
mod decide;
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
use sha2::{Digest, Sha256};

use std::future::Future;

use super::{
    Admission, BoxFuture, Charge, Decision, Entry, FlapRule, Folded, InhibitKey, Inhibitor, Observation, OpenWindow,
    RateLimit, StateError, StateStore, StormConfig, StormKind, Verdict,
};
use crate::section::ConfigError;
use crate::signal::SignalStatus;
use crate::telemetry::Metrics;
pub use connection::TlsFiles;
use connection::{Connection, Topology};
pub use decide::decode;
use decide::{bad_reply, Adoption, DecideCall, Group, Mode, Record};
pub use monitor::risks;
use schema::Schema;

const DECIDE: &str = include_str!("decide.lua");
/// Defines the `gcra` function that both scripts start with.
const GCRA: &str = include_str!("gcra.lua");
/// Ends inhibit holds their source still holds (see `release_inhibitors`).
const RELEASE: &str = include_str!("release.lua");

/// The decide function's library: its name, which is also the function's, and its
/// source. The name carries a digest of the code, so replicas of two versions
/// sharing Redis during a rolling upgrade each call their own (a library stays
/// loaded until Redis restarts or someone deletes it: a few kilobytes per version,
/// as a script cache holds scripts). Without flags a function "may write", so under
/// `maxmemory` with noeviction Redis refuses a whole call with OOM before it runs:
/// never a partial write.
struct Library {
    name: String,
    source: String,
}

impl Library {
    fn decide() -> Self {
        let body = format!("{GCRA}\n{DECIDE}");
        let digest = Sha256::digest(body.as_bytes());
        let name = format!("tidegate_decide_{}", hex::encode(&digest[..8]));
        let source = format!("#!lua name={name}\n{body}\nredis.register_function('{name}', decide)\n");
        Library { name, source }
    }

    /// `FUNCTION LOAD REPLACE`: redis-rs sends it to every primary of a Cluster.
    fn load_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&self.source);
        cmd
    }

    /// `FCALL` of the function on a call's keys and its one packed argument.
    fn call_cmd(&self, call: &DecideCall<'_>) -> redis::Cmd {
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&self.name).arg(call.keys.len()).arg(&call.keys[..]).arg(call.packed());
        cmd
    }
}

/// Whether Redis does not know the decide function (see [`Shared::loaded`]).
fn function_missing(e: &RedisError) -> bool {
    server_error_is(e, |code, detail| code == "ERR" && detail.is_some_and(|d| d.starts_with("Function not found")))
}

/// The rate-limit script's source. The `#!lua` shebang (no flags) makes Redis 7
/// treat a script as "may write", so under `maxmemory` with noeviction a call is
/// refused with OOM before it runs.
fn gcra_script() -> Script {
    let gcra = format!(
        "#!lua\n{GCRA}\n\
         local allowed, retry = gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n\
         return {{allowed, retry}}\n"
    );
    Script::new(&gcra)
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
    decide: Library,
    gcra: Script,
    /// Deletes inhibit keys still held by the releasing source: `release.lua`.
    release: Script,
    timeout: Duration,
    /// Set when Redis refused a write for lack of memory; cleared once it has room.
    out_of_memory: AtomicBool,
    /// Fingerprints held, as last counted by the monitor.
    entries: AtomicU64,
    /// The [`FlapRule`], as `window_s << 32 | keep`: set once, after connecting.
    flap: AtomicU64,
}

impl RedisStore {
    /// Connects, checks the eviction policy and starts the monitor that exports
    /// Redis memory gauges. The decide library is loaded when first needed
    /// (`Shared::loaded`).
    pub async fn connect(
        topology: &Topology,
        config: &RedisConfig,
        window: Duration,
        storms: &StormConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StateError> {
        let certs = config.tls.load().map_err(|e| StateError::Tls(Box::new(e)))?;
        let conn = Connection::open(topology, config.timeout, certs.as_ref())
            .await
            .map_err(|e| StateError::Unavailable(Box::new(e)))?;
        let shared = Arc::new(Shared {
            conn,
            schema: Schema::new(
                config.prefix.clone(),
                window.as_secs() as u32,
                matches!(topology, Topology::Cluster { .. }),
            ),
            storms: *storms,
            decide: Library::decide(),
            gcra: gcra_script(),
            release: Script::new(RELEASE),
            timeout: config.timeout,
            out_of_memory: AtomicBool::new(false),
            entries: AtomicU64::new(0),
            flap: AtomicU64::new(flap_bits(FlapRule::default())),
        });
        let warnings = monitor::eviction_warnings(&shared.conn).await;
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        tokio::spawn(monitor::run(Arc::downgrade(&shared), metrics, config.monitor_interval));
        Ok(RedisStore { shared, warnings })
    }

    /// The store counting flap transitions as `rule` says, rather than by `flap`'s
    /// defaults.
    pub fn with_flap(self, rule: FlapRule) -> Self {
        self.shared.flap.store(flap_bits(rule), Ordering::Relaxed);
        self
    }

    /// What start-up found risky in Redis' memory configuration.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

fn flap_bits(rule: FlapRule) -> u64 {
    u64::from(rule.window_s.max(1)) << 32 | u64::from(rule.keep.max(1))
}

impl Shared {
    /// The flap rule [`RedisStore::with_flap`] set.
    fn flap(&self) -> FlapRule {
        let bits = self.flap.load(Ordering::Relaxed);
        FlapRule { window_s: (bits >> 32) as u32, keep: bits as u32 }
    }

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
        let flap = self.flap();
        let mut calls: Vec<DecideCall> = Vec::new();
        if let Some(charge) = charge {
            debug_assert!(!self.schema.cluster(), "the budget key has a slot of its own");
            let budget = self.schema.budget_key(charge.source);
            calls.push(DecideCall::new(None, now_s, window_s, rules, flap, Some((budget, charge))));
        }
        for (position, o) in batch.iter().enumerate() {
            let scope = o.storm.as_ref().map(|k| &k.scope);
            let tag = self.schema.dedup_tag(&o.fingerprint, scope);
            // On Cluster, every key of an observation shares its dedup tag's slot.
            let slot = self.schema.cluster().then_some(tag);
            let call = match calls.iter().position(|c| c.slot == slot) {
                Some(i) => &mut calls[i],
                None => {
                    calls.push(DecideCall::new(slot, now_s, window_s, rules, flap, None));
                    calls.last_mut().expect("just pushed")
                }
            };
            let d = call.intern(Group::Dedup(tag), || [self.schema.dedup_key(tag, now_s)]);
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
                (None, SignalStatus::Acknowledged) => (Mode::Acknowledge, (0, 0)),
            };
            let record = Record {
                mode,
                dedup_at: d,
                storm_at: s,
                adopt: adopted,
                resource: storm.map_or([0; 8], |k| k.resource),
                field: self.schema.field(&o.fingerprint),
            };
            call.push(record, position);
        }
        calls.iter_mut().for_each(DecideCall::seal);
        let replies = self.run(&calls).await?;
        Ok(decode(batch.len(), calls.iter().map(|c| c.members.as_slice()), replies))
    }

    /// Runs one `FCALL` per call: one pipeline on a single node, concurrent calls
    /// on Cluster, each loading the library first where Redis does not have it.
    async fn run(&self, calls: &[DecideCall<'_>]) -> Result<Vec<Value>, RedisError> {
        let library = &self.decide;
        if !self.schema.cluster() {
            let mut pipe = redis::pipe();
            for call in calls {
                pipe.add_command(library.call_cmd(call));
            }
            return self.loaded(|| self.conn.query_pipeline(&pipe)).await;
        }
        let invocations = calls.iter().map(|call| {
            let cmd = library.call_cmd(call);
            async move { self.loaded(|| self.conn.query::<Value>(&cmd)).await }
        });
        futures::future::join_all(invocations).await.into_iter().collect()
    }

    /// `send`'s answer, sent again after loading the decide library on every primary
    /// if Redis does not know it: it restarted without persistence, someone flushed
    /// its functions, or a Cluster primary is new. (A replica promoted by a failover
    /// has it: `FUNCTION LOAD` replicates.)
    async fn loaded<T, Fut>(&self, send: impl Fn() -> Fut) -> Result<T, RedisError>
    where
        Fut: Future<Output = Result<T, RedisError>>,
    {
        match send().await {
            Err(e) if function_missing(&e) => {
                self.conn.query::<Value>(&self.decide.load_cmd()).await?;
                send().await
            }
            other => other,
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
        let fields: Vec<i64> = redis::from_redis_value(reply).map_err(|source| StateError::ReplyType {
            script: "rate-limit",
            source: Box::new(RedisError::from(source)),
        })?;
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

    /// One `MGET` of the keys (they share a slot): inhibition's one extra round
    /// trip, paid only by batches with a signal some rule's target matchers match.
    /// It cannot ride in the decide script: on Cluster that script's keys carry
    /// the batch's storm scope's tag, and inhibit keys cannot.
    async fn inhibitors(&self, keys: &[InhibitKey]) -> Result<Vec<Option<Inhibitor>>, StateError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.schema.inhibit_key(key));
        }
        let values: Vec<Option<Vec<u8>>> = self.guarded(self.conn.query(&cmd)).await?;
        if values.len() != keys.len() {
            return Err(bad_reply("MGET", format!("{} values for {} keys", values.len(), keys.len())));
        }
        // A value this version cannot read holds nothing back rather than failing the batch.
        Ok(values.iter().map(|v| v.as_deref().and_then(schema::parse_inhibit_value)).collect())
    }

    /// One `SET … EX` per hold, in one pipeline (one slot, one round trip).
    async fn hold_inhibitors(
        &self,
        holds: &[(InhibitKey, Inhibitor)],
        now_s: u32,
        until_s: u32,
    ) -> Result<(), StateError> {
        if holds.is_empty() {
            return Ok(());
        }
        let ttl = until_s.saturating_sub(now_s).max(1);
        let mut pipe = redis::pipe();
        for (key, inhibitor) in holds {
            pipe.cmd("SET")
                .arg(self.schema.inhibit_key(key))
                .arg(schema::inhibit_value(inhibitor))
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        self.guarded(self.conn.query_pipeline::<()>(&pipe)).await
    }

    /// One script for the batch (every inhibit key shares a slot): each key is
    /// deleted only if its value still names the releasing source incident, so a
    /// source that took the key over meanwhile keeps it.
    async fn release_inhibitors(&self, releases: &[(InhibitKey, Inhibitor)]) -> Result<usize, StateError> {
        if releases.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.release.prepare_invoke();
        for (key, inhibitor) in releases {
            invocation.key(self.schema.inhibit_key(key)).arg(&schema::inhibit_holder(inhibitor)[..]);
        }
        let released: i64 = self.guarded(self.conn.invoke(&invocation)).await?;
        Ok(released.max(0) as usize)
    }

    fn classify(&self, e: &RedisError) -> StateError {
        if is_oom(e) {
            self.out_of_memory.store(true, Ordering::Relaxed);
            StateError::OutOfMemory(Box::new(e.clone()))
        } else if e.is_timeout() {
            StateError::Timeout(self.timeout)
        } else {
            StateError::Unavailable(Box::new(e.clone()))
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
    server_error_is(e, |code, _| code == "OOM")
}

/// Whether Redis answered an error (its code and detail) that `is` picks, alone or
/// inside a pipeline.
fn server_error_is(e: &RedisError, is: impl Fn(&str, Option<&str>) -> bool) -> bool {
    match e.clone().into_server_errors() {
        Some(errors) => errors.iter().any(|(_, err)| is(err.code(), err.details())),
        None => e.code().is_some_and(|code| is(code, e.detail())),
    }
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

    fn inhibitors<'a>(
        &'a self,
        keys: &'a [InhibitKey],
        _now_s: u32,
    ) -> BoxFuture<'a, Result<Vec<Option<Inhibitor>>, StateError>> {
        Box::pin(self.shared.inhibitors(keys))
    }

    fn hold_inhibitors<'a>(
        &'a self,
        holds: &'a [(InhibitKey, Inhibitor)],
        now_s: u32,
        until_s: u32,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(self.shared.hold_inhibitors(holds, now_s, until_s))
    }

    fn first_sighting(&self, id: [u8; 16], ttl: Duration) -> BoxFuture<'_, Result<bool, StateError>> {
        Box::pin(self.shared.first_sighting(id, ttl))
    }

    fn forget_sighting(&self, id: [u8; 16]) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.shared.forget_sighting(id))
    }

    fn release_inhibitors<'a>(
        &'a self,
        releases: &'a [(InhibitKey, Inhibitor)],
    ) -> BoxFuture<'a, Result<usize, StateError>> {
        Box::pin(self.shared.release_inhibitors(releases))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.shared.ping())
    }

    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(async move { Ok(self.shared.entries.load(Ordering::Relaxed)) })
    }
}
