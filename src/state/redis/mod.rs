//! The Redis state backend: dedup state shared by every replica.
//!
//! One server-side script (`dedup.lua`) answers one observation atomically; a
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

use super::{BoxFuture, Entry, Observation, StateError, StateStore, Verdict};
use crate::signal::SignalStatus;
use crate::telemetry::Metrics;
use connection::{Connection, Handle, Topology};
use schema::Schema;

const DEDUP_SCRIPT: &str = include_str!("dedup.lua");

/// Settings of the Redis backend, from `redis.*` config.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    pub topology: Topology,
    pub prefix: String,
    pub window: Duration,
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
    script: Script,
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
            schema: Schema::new(options.prefix, options.window.as_secs() as u32),
            script: Script::new(DEDUP_SCRIPT),
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

    pub fn schema(&self) -> &Schema {
        &self.shared.schema
    }
}

impl Shared {
    async fn observe(&self, batch: &[Observation], now_s: u32) -> Result<Vec<Verdict>, StateError> {
        let replies = match tokio::time::timeout(self.timeout, self.run(batch, now_s)).await {
            Ok(Ok(replies)) => replies,
            Ok(Err(e)) => {
                self.conn.failed(&e).await;
                return Err(self.classify(&e));
            }
            Err(_) => return Err(StateError::Timeout(self.timeout)),
        };
        self.out_of_memory.store(false, Ordering::Relaxed);
        replies.into_iter().map(verdict).collect()
    }

    async fn run(&self, batch: &[Observation], now_s: u32) -> Result<Vec<Value>, RedisError> {
        let window = self.schema.window_s();
        let calls: Vec<([String; 3], [u8; 8], &str)> = batch
            .iter()
            .map(|o| {
                let mode = if o.status == SignalStatus::Firing {
                    "fire"
                } else {
                    "resolve"
                };
                (
                    self.schema.dedup_keys(&o.fingerprint, now_s),
                    schema::field(&o.fingerprint),
                    mode,
                )
            })
            .collect();
        match self.conn.handle() {
            Handle::Single(mut conn) => {
                let mut pipe = redis::pipe();
                for (keys, field, mode) in &calls {
                    pipe.cmd("EVALSHA")
                        .arg(self.script.get_hash())
                        .arg(keys.len())
                        .arg(&keys[..]);
                    pipe.arg(&field[..]).arg(now_s).arg(window).arg(*mode);
                }
                match pipe.query_async::<Vec<Value>>(&mut conn).await {
                    Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        // Redis restarted or failed over and lost its script cache.
                        self.script.load_async(&mut conn).await?;
                        pipe.query_async(&mut conn).await
                    }
                    other => other,
                }
            }
            Handle::Cluster(conn) => {
                let requests = calls.iter().map(|(keys, field, mode)| {
                    let mut conn = conn.clone();
                    let mut inv = self.script.prepare_invoke();
                    inv.key(&keys[..]).arg(&field[..]).arg(now_s).arg(window).arg(*mode);
                    async move { inv.invoke_async::<Value>(&mut conn).await }
                });
                futures::future::join_all(requests).await.into_iter().collect()
            }
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

/// Decodes `{verdict, first_seen, last_seen, count}`.
fn verdict(reply: Value) -> Result<Verdict, StateError> {
    let bad = |what: String| StateError::Unavailable(format!("unexpected reply from the dedup script: {what}"));
    let fields: Vec<i64> = redis::from_redis_value(reply).map_err(|e| bad(e.to_string()))?;
    let [code, first, last, count] = fields[..] else {
        return Err(bad(format!("{fields:?}")));
    };
    let entry = Entry {
        first_seen_s: first as u32,
        last_seen_s: last as u32,
        count: count as u32,
    };
    Ok(match code {
        0 => Verdict::New(entry),
        1 => Verdict::Duplicate(entry),
        2 => Verdict::ResolvedOpen(entry),
        3 => Verdict::ResolvedUnknown,
        other => return Err(bad(format!("verdict {other}"))),
    })
}

impl StateStore for RedisStore {
    fn observe<'a>(&'a self, batch: &'a [Observation], now_s: u32) -> BoxFuture<'a, Result<Vec<Verdict>, StateError>> {
        Box::pin(self.shared.observe(batch, now_s))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(self.shared.ping())
    }

    fn entries(&self) -> BoxFuture<'_, Result<u64, StateError>> {
        Box::pin(async move { Ok(self.shared.entries.load(Ordering::Relaxed)) })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
