//! Which state store a gateway uses (`state`), and how the store builds and checks
//! itself from the sections it reads.
//!
//! The one place that tells the backends apart: assembly and `tidegate doctor` ask
//! [`Settings`] for a store or for checks and never match on the backend.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::memory::{MemoryConfig, MemoryStore};
use super::redis::connection::Topology;
use super::redis::{RedisConfig, RedisStore};
use super::{FlapRule, StateError, StateStore, StormConfig};
use crate::check::Check;
use crate::context::Context;
use crate::section::ConfigError;

/// Where decision state lives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum StateBackend {
    /// In process; lost on restart, private to one replica.
    Memory,
    /// A Redis deployment shared by replicas: standalone, Sentinel or Cluster.
    Redis(Topology),
}

impl StateBackend {
    /// Threads that run requests unless `runtime.worker_threads` says otherwise: one
    /// per core with the embedded store, one with Redis (see
    /// `Config::worker_threads` for the measurement).
    pub fn default_worker_threads(&self) -> usize {
        match self {
            StateBackend::Redis(_) => 1,
            StateBackend::Memory => std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A state store that is none of the stores.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnknownBackend {
    #[error(
        "expected \"memory\" or a redis://, redis+sentinel:// or redis+cluster:// URL (rediss… over TLS), got {0:?}"
    )]
    Unknown(String),
    #[error(transparent)]
    Redis(#[from] super::redis::connection::UrlError),
}

impl FromStr for StateBackend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "memory" => Ok(StateBackend::Memory),
            url if url.starts_with("redis") => Ok(StateBackend::Redis(url.parse()?)),
            other => Err(UnknownBackend::Unknown(other.to_string())),
        }
    }
}

impl TryFrom<String> for StateBackend {
    type Error = UnknownBackend;
    fn try_from(s: String) -> Result<Self, UnknownBackend> {
        s.parse()
    }
}

impl fmt::Display for StateBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateBackend::Memory => f.write_str("memory"),
            StateBackend::Redis(topology) => topology.fmt(f),
        }
    }
}

/// Written as [`Display`](fmt::Display) writes it, with credentials masked: it is
/// serialized only to show a configuration, never to store one.
impl Serialize for StateBackend {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the state store is built from: the backend, each backend's section, and
/// the dedup window and storm rules every backend enforces.
#[derive(Clone, Debug)]
pub struct Settings {
    pub backend: StateBackend,
    pub memory: MemoryConfig,
    pub redis: RedisConfig,
    /// `dedup.window`.
    pub window: Duration,
    pub storm: StormConfig,
    /// `flap`, as the store counts transitions.
    pub flap: FlapRule,
}

impl Settings {
    /// What no backend can be built from, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tls = matches!(&self.backend, StateBackend::Redis(topology) if topology.tls());
        if !self.redis.tls.is_empty() && !tls {
            return Err(ConfigError::invalid("redis.tls", "is set, but the state is not a rediss:// (TLS) Redis URL"));
        }
        Ok(())
    }

    /// The store: in process, or connected to Redis.
    pub async fn build(&self, ctx: &Context) -> Result<Arc<dyn StateStore>, StateError> {
        Ok(match &self.backend {
            StateBackend::Memory => Arc::new(
                MemoryStore::new(&self.memory, self.window, &self.storm, ctx.clock.clone()).with_flap(self.flap),
            ),
            StateBackend::Redis(topology) => {
                tracing::info!(state = %self.backend, "connecting to Redis");
                let metrics = ctx.metrics.clone();
                let store = RedisStore::connect(topology, &self.redis, self.window, &self.storm, metrics).await?;
                Arc::new(store.with_flap(self.flap))
            }
        })
    }

    /// `tidegate doctor`'s checks of the store: Redis' when the state is Redis, and
    /// a skipped `redis` check otherwise, so the report says it was not looked at.
    pub async fn doctor(&self, ctx: &Context) -> Vec<Check> {
        match &self.backend {
            StateBackend::Redis(topology) => super::redis::doctor::checks(topology, &self.redis, ctx.load).await,
            StateBackend::Memory => vec![Check::skip("redis", "state is memory")],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StateBackend;

    #[test]
    fn backends_parse_and_hide_credentials() {
        assert_eq!("memory".parse::<StateBackend>(), Ok(StateBackend::Memory));
        let r: StateBackend = "redis://:secret@host:6379/0".parse().unwrap();
        assert_eq!(r.to_string(), "redis://***@host:6379/0");
        let r: StateBackend = "redis+sentinel://:secret@s1:26379,s2:26379/mymaster".parse().unwrap();
        assert_eq!(r.to_string(), "redis+sentinel://***@s1:26379,s2:26379/mymaster");
        let r: StateBackend = "rediss+sentinel://:secret@s1:26379/mymaster/2".parse().unwrap();
        assert_eq!(r.to_string(), "rediss+sentinel://***@s1:26379/mymaster/2");
        assert!("postgres://x".parse::<StateBackend>().is_err());
    }
}
