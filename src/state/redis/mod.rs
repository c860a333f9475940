//! The Redis state backend: dedup state shared by every replica.
//!
//! One server-side script (`decide.lua`) answers one observation atomically; a
//! batch is sent as one pipeline of `EVALSHA`s, so a webhook costs one network
//! round trip (on Cluster, one concurrent round trip per slot). What is stored is
//! fixed-size metadata only (see [`schema`]): never a signal, never a request.
//!
//! Failure policy: any error (OOM under `noeviction`, unreachable, slower than
//! `redis.timeout`) is a [`StateError`], answered 503 with `Retry-After`; an OOM
//! also turns readiness off until Redis has room again. The connection recovers
//! by itself when Redis comes back.

pub mod connection;
mod monitor;
pub mod schema;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, Script, Value};

use std::future::Future;

use super::{
    Admission, BoxFuture, Entry, Folded, Observation, RateLimit, StateError, StateStore, StormKind, StormRules, Verdict,
};
use crate::signal::SignalStatus;
use crate::telemetry::Metrics;
use connection::{Connection, Handle, Topology};
use schema::Schema;

const DECIDE_SCRIPT: &str = include_str!("decide.lua");
const GCRA_SCRIPT: &str = include_str!("gcra.lua");

/// Settings of the Redis backend, from `redis.*` config.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub topology: Topology,
    pub prefix: String,
    pub window: Duration,
    pub storms: StormRules,
    pub timeout: Duration,
    pub monitor_interval: Duration,
}

pub struct RedisStore {
    shared: Arc<Shared>,
    warnings: Vec<String>,
}

struct Shared {
    conn: Connection,
    schema: Schema,
    storms: StormRules,
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
    pub async fn connect(options: RedisOptions, metrics: Arc<Metrics>) -> Result<Self, StateError> {
        let conn = Connection::open(&options.topology, options.timeout)
            .await
            .map_err(|e| StateError::Unavailable(format!("cannot connect to Redis: {e}")))?;
        let shared = Arc::new(Shared {
            conn,
            schema: Schema::new(
                options.prefix,
                options.window.as_secs() as u32,
                matches!(options.topology, Topology::Cluster { .. }),
            ),
            storms: options.storms,
            decide: Script::new(DECIDE_SCRIPT),
            gcra: Script::new(GCRA_SCRIPT),
            timeout: options.timeout,
            out_of_memory: AtomicBool::new(false),
            entries: AtomicU64::new(0),
        });
        let warnings = monitor::eviction_warnings(&shared.conn).await;
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        tokio::spawn(monitor::run(Arc::downgrade(&shared), metrics, options.monitor_interval));
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
        self.guarded(self.decide(batch, now_s)).await?.into_iter().collect()
    }

    /// One `decide.lua` call per observation, all in one round trip.
    async fn decide(&self, batch: &[Observation], now_s: u32) -> Result<Vec<Result<Verdict, StateError>>, RedisError> {
        let rules = &self.storms;
        let calls = batch.iter().map(|o| {
            let scope = o.storm.as_ref().map(|k| &k.scope);
            let mut keys = self.schema.dedup_keys(&o.fingerprint, scope, now_s).to_vec();
            let mode = if o.status == SignalStatus::Firing { "fire" } else { "resolve" };
            let mut args =
                vec![self.schema.field(&o.fingerprint), arg(now_s), arg(self.schema.window_s()), mode.into()];
            if let (SignalStatus::Firing, Some(key)) = (o.status, &o.storm) {
                keys.extend(self.schema.storm_keys(&key.scope, now_s, rules));
                args.extend([
                    key.resource.to_vec(),
                    arg(rules.rate_threshold),
                    arg(rules.rate_window_s),
                    arg(rules.pattern_threshold),
                    arg(rules.pattern_window_s),
                    arg(rules.inactivity_s),
                    arg(rules.max_duration_s),
                ]);
            }
            Call { keys, args }
        });
        let replies = self.call_all(&self.decide, calls.collect()).await?;
        Ok(replies.into_iter().map(verdict).collect())
    }

    /// Invokes `script` once per call: one pipeline on a single node, concurrent
    /// calls (one per slot) on Cluster.
    async fn call_all(&self, script: &Script, calls: Vec<Call>) -> Result<Vec<Value>, RedisError> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        match self.conn.handle() {
            Handle::Single(mut conn) => {
                let mut pipe = redis::pipe();
                for call in &calls {
                    pipe.cmd("EVALSHA").arg(script.get_hash()).arg(call.keys.len()).arg(&call.keys[..]);
                    for a in &call.args {
                        pipe.arg(&a[..]);
                    }
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
                let requests = calls.iter().map(|call| {
                    let mut conn = conn.clone();
                    let mut inv = script.prepare_invoke();
                    inv.key(&call.keys[..]);
                    for a in &call.args {
                        inv.arg(&a[..]);
                    }
                    async move { inv.invoke_async::<Value>(&mut conn).await }
                });
                futures::future::join_all(requests).await.into_iter().collect()
            }
        }
    }

    async fn adopt(&self, o: &Observation, entry: Entry, now_s: u32) -> Result<(), StateError> {
        let call = Call {
            keys: self.schema.dedup_keys(&o.fingerprint, o.storm.as_ref().map(|k| &k.scope), now_s).to_vec(),
            args: vec![
                self.schema.field(&o.fingerprint),
                arg(now_s),
                arg(self.schema.window_s()),
                "adopt".into(),
                arg(entry.first_seen_s),
                arg(entry.count),
            ],
        };
        self.guarded(self.call_all(&self.decide, vec![call])).await.map(drop)
    }

    async fn admit(&self, source: &str, limit: RateLimit, now_ms: u64) -> Result<Admission, StateError> {
        let call = Call {
            keys: vec![self.schema.budget_key(source)],
            args: vec![arg(now_ms), arg(limit.emission_interval_ms()), arg(limit.tolerance_ms())],
        };
        let replies = self.guarded(self.call_all(&self.gcra, vec![call])).await?;
        let bad =
            |what: String| StateError::Unavailable(format!("unexpected reply from the rate-limit script: {what}"));
        let reply = replies.into_iter().next().ok_or_else(|| bad("nothing".into()))?;
        let fields: Vec<i64> = redis::from_redis_value(reply).map_err(|e| bad(e.to_string()))?;
        match fields[..] {
            [1, _] => Ok(Admission::Allowed),
            [0, retry] => Ok(Admission::Limited { retry_after_ms: retry.max(0) as u64 }),
            _ => Err(bad(format!("{fields:?}"))),
        }
    }

    fn classify(&self, e: &RedisError) -> StateError {
        if is_oom(e) {
            self.out_of_memory.store(true, Ordering::Relaxed);
            StateError::OutOfMemory(e.to_string())
        } else if e.is_timeout() {
            StateError::Timeout(self.timeout)
        } else {
            StateError::Unavailable(e.to_string())
        }
    }

    async fn ping(&self) -> Result<(), StateError> {
        // After an OOM refusal, stay unready until Redis has room again, even with
        // no traffic to prove it.
        let probe = async {
            let _: () = match self.conn.handle() {
                Handle::Single(mut c) => redis::cmd("PING").query_async(&mut c).await?,
                Handle::Cluster(mut c) => redis::cmd("PING").query_async(&mut c).await?,
            };
            let full = self.out_of_memory.load(Ordering::Relaxed) && monitor::is_full(&self.conn).await?;
            Ok::<bool, RedisError>(full)
        };
        match tokio::time::timeout(self.timeout, probe).await {
            Ok(Ok(false)) => {
                self.out_of_memory.store(false, Ordering::Relaxed);
                Ok(())
            }
            Ok(Ok(true)) => Err(StateError::OutOfMemory("used_memory has reached maxmemory".into())),
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

/// One script invocation: its keys and arguments.
struct Call {
    keys: Vec<String>,
    args: Vec<Vec<u8>>,
}

fn arg(n: impl std::fmt::Display) -> Vec<u8> {
    n.to_string().into_bytes()
}

fn bad_reply(script: &str, what: String) -> StateError {
    StateError::Unavailable(format!("unexpected reply from the {script} script: {what}"))
}

/// Decodes `decide.lua`'s reply.
fn verdict(reply: Value) -> Result<Verdict, StateError> {
    let bad = |what: String| bad_reply("decide", what);
    let fields: Vec<i64> = redis::from_redis_value(reply).map_err(|e| bad(e.to_string()))?;
    let entry = |first: i64, last: i64, count: i64| Entry {
        first_seen_s: first as u32,
        last_seen_s: last as u32,
        count: count as u32,
    };
    Ok(match fields[..] {
        [0, first, last, count] => Verdict::New(entry(first, last, count)),
        [1, first, last, count] => Verdict::Duplicate(entry(first, last, count)),
        [2, first, last, count] => Verdict::ResolvedOpen(entry(first, last, count)),
        [3, ..] => Verdict::ResolvedUnknown,
        [5, id, kind, alerts, resources, opened] => Verdict::Folded(Folded {
            window_id: id as u32,
            kind: if kind == 2 { StormKind::Pattern } else { StormKind::Rate },
            alert_count: alerts as u32,
            resource_count: resources as u32,
            opened: opened == 1,
        }),
        _ => return Err(bad(format!("{fields:?}"))),
    })
}

impl StateStore for RedisStore {
    fn adopt<'a>(&'a self, o: &'a Observation, entry: Entry, now_s: u32) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(self.shared.adopt(o, entry, now_s))
    }

    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>> {
        Box::pin(self.shared.observe(batch, now_s))
    }

    fn admit<'a>(
        &'a self,
        source: &'a str,
        limit: RateLimit,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Admission, StateError>> {
        Box::pin(self.shared.admit(source, limit, now_ms))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.shared.ping())
    }

    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(async move { Ok(self.shared.entries.load(Ordering::Relaxed)) })
    }
}
