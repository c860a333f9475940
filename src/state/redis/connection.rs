//! Connections to the three Redis topologies tidegate supports.
//!
//! - standalone: `redis://[user:pass@]host:port[/db]`, through redis-rs's
//!   `ConnectionManager`, which reconnects by itself;
//! - Sentinel: `redis+sentinel://[user:pass@]s1:port,s2:port,s3:port/<master>[/db]`.
//!   A `ConnectionManager` to the current primary, replaced by asking the sentinels
//!   again whenever the primary stops answering or answers `READONLY` (it was
//!   demoted): redis-rs's manager reconnects to an address, not to a role;
//! - Cluster: `redis+cluster://[user:pass@]node1:port,node2:port,...`, through
//!   redis-rs's cluster client, which follows slot moves and failovers itself.
//!
//! Credentials apply to the Redis nodes; sentinels are reached without them.
//!
//! TLS: `rediss://`, `rediss+sentinel://` (sentinels and nodes alike) and
//! `rediss+cluster://`. The server's certificate is checked against the system's
//! trust store, or against `redis.tls.ca_file`; `redis.tls.cert_file` and `key_file`
//! give a client certificate to a Redis that asks for one (`tls-auth-clients`).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ClientTlsConfig, Cmd, FromRedisValue, IntoConnectionInfo, RedisConnectionInfo, RedisError, RedisResult,
    ScriptInvocation, TlsCertificates, TlsMode,
};

/// A parsed `--state` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Topology {
    Standalone {
        url: String,
    },
    /// `sentinels` and `nodes` are `redis://host:port`, or `rediss://` over TLS.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        auth: Auth,
        db: i64,
    },
    Cluster {
        nodes: Vec<String>,
        auth: Auth,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A Redis URL tidegate cannot connect to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("{0:?} is not a URL")]
    NotAUrl(String),
    #[error("{0}:// needs at least one host:port")]
    NoHost(String),
    #[error("{0}:// needs the master name as its path, as in {0}://s1:26379/mymaster")]
    NoMaster(String),
    #[error("database {0:?} is not a number")]
    Database(String),
    #[error("unknown Redis scheme {0:?}; use redis, redis+sentinel or redis+cluster (rediss… over TLS)")]
    Scheme(String),
}

impl FromStr for Topology {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| UrlError::NotAUrl(url.to_string()))?;
        match scheme {
            "redis" | "rediss" => Ok(Topology::Standalone { url: url.to_string() }),
            "redis+sentinel" | "redis+cluster" | "rediss+sentinel" | "rediss+cluster" => {
                let (node_scheme, kind) = scheme.split_once('+').expect("matched above");
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                let (auth, hosts) = match authority.rsplit_once('@') {
                    Some((userinfo, hosts)) => (parse_auth(userinfo), hosts),
                    None => (Auth::default(), authority),
                };
                let hosts: Vec<String> =
                    hosts.split(',').filter(|h| !h.is_empty()).map(|h| format!("{node_scheme}://{h}")).collect();
                if hosts.is_empty() {
                    return Err(UrlError::NoHost(scheme.to_string()));
                }
                if kind == "cluster" {
                    return Ok(Topology::Cluster { nodes: hosts, auth });
                }
                let mut parts = path.split('/').filter(|p| !p.is_empty());
                let master = parts.next().ok_or_else(|| UrlError::NoMaster(scheme.to_string()))?.to_string();
                let db = match parts.next() {
                    Some(db) => db.parse().map_err(|_| UrlError::Database(db.to_string()))?,
                    None => 0,
                };
                Ok(Topology::Sentinel { sentinels: hosts, master, auth, db })
            }
            other => Err(UrlError::Scheme(other.to_string())),
        }
    }
}

impl std::fmt::Display for Topology {
    /// The URL with any credentials masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, hosts, auth, path) = match self {
            Topology::Standalone { url } => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
                return match rest.rsplit_once('@') {
                    Some((_, host)) => write!(f, "{scheme}://***@{host}"),
                    None => f.write_str(url),
                };
            }
            Topology::Sentinel { sentinels, master, auth, db } => {
                let path = if *db == 0 { format!("/{master}") } else { format!("/{master}/{db}") };
                ("sentinel", sentinels, auth, path)
            }
            Topology::Cluster { nodes, auth } => ("cluster", nodes, auth, String::new()),
        };
        let hosts: Vec<&str> = hosts.iter().map(|h| h.split_once("://").map_or(h.as_str(), |(_, host)| host)).collect();
        let masked = if auth.password.is_some() || auth.username.is_some() { "***@" } else { "" };
        let node_scheme = if self.tls() { "rediss" } else { "redis" };
        write!(f, "{node_scheme}+{scheme}://{masked}{}{path}", hosts.join(","))
    }
}

impl Topology {
    /// Whether its connections use TLS.
    pub fn tls(&self) -> bool {
        match self {
            Topology::Standalone { url } => url.starts_with("rediss://"),
            Topology::Sentinel { sentinels: hosts, .. } | Topology::Cluster { nodes: hosts, .. } => {
                hosts.iter().any(|h| h.starts_with("rediss://"))
            }
        }
    }
}

impl Auth {
    fn apply(&self, mut info: RedisConnectionInfo) -> RedisConnectionInfo {
        if let Some(user) = &self.username {
            info = info.set_username(user);
        }
        if let Some(pass) = &self.password {
            info = info.set_password(pass);
        }
        info
    }
}

fn parse_auth(userinfo: &str) -> Auth {
    let (user, pass) = userinfo.split_once(':').unwrap_or(("", userinfo));
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Auth { username: nonempty(user), password: nonempty(pass) }
}

/// PEM files for TLS topologies (`redis.tls.*`). With none set, Redis' certificate
/// is checked against the system's trust store and no client certificate is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA certificates that sign Redis' certificate, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for a Redis with `tls-auth-clients`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }

    /// Reads the files; `None` when none is set.
    pub fn load(&self) -> Result<Option<TlsCertificates>, TlsFileError> {
        if self.is_empty() {
            return Ok(None);
        }
        let read = |name: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| TlsFileError::Read { name, path: path.into(), source })
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                Some(ClientTlsConfig { client_cert: read("cert_file", cert)?, client_key: read("key_file", key)? })
            }
            (None, None) => None,
            _ => return Err(TlsFileError::Unpaired),
        };
        let root_cert = self.ca_file.as_deref().map(|ca| read("ca_file", ca)).transpose()?;
        Ok(Some(TlsCertificates { client_tls, root_cert }))
    }
}

/// A `redis.tls` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read redis.tls.{name} {}: {source}", path.display())]
    Read { name: &'static str, path: PathBuf, source: std::io::Error },
    #[error("redis.tls.cert_file and redis.tls.key_file go together")]
    Unpaired,
}

/// A live connection, whatever the topology.
pub enum Connection {
    Standalone(ConnectionManager),
    Sentinel(Box<SentinelConnection>),
    Cluster(ClusterConnection, NodeAccess),
}

/// How to reach one Cluster node directly, as the cluster client does.
pub struct NodeAccess {
    auth: Auth,
    tls: bool,
    certs: Option<TlsCertificates>,
}

impl Connection {
    /// Connects, failing if the topology cannot be reached now. `certs` replace the
    /// system's trust store (and add a client certificate) for TLS topologies.
    ///
    /// TCP_NODELAY stays off (redis-rs' default): many requests share one
    /// multiplexed connection, and Nagle lets their commands share segments.
    /// Measured with `BENCH_STATE=redis cargo bench --bench ingest`, turning it on
    /// cost ~15 % of alerts per server CPU-second, with no better p99.
    pub async fn open(topology: &Topology, timeout: Duration, certs: Option<&TlsCertificates>) -> RedisResult<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect attempts are the manager's business; a request never waits on them.
            .set_number_of_retries(1);
        match topology {
            Topology::Standalone { url } => {
                let client = match certs {
                    Some(certs) if topology.tls() => Client::build_with_tls(url.as_str(), certs.clone())?,
                    _ => Client::open(url.as_str())?,
                };
                Ok(Connection::Standalone(ConnectionManager::new_with_config(client, config).await?))
            }
            Topology::Sentinel { sentinels, master, auth, db } => {
                let addrs = sentinels
                    .iter()
                    .map(|s| Ok(s.as_str().into_connection_info()?.addr().clone()))
                    .collect::<RedisResult<Vec<_>>>()?;
                let mut builder =
                    SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?.set_client_to_redis_db(*db);
                if let Some(user) = &auth.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(pass) = &auth.password {
                    builder = builder.set_client_to_redis_password(pass);
                }
                if topology.tls() {
                    builder = builder
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                        .set_client_to_redis_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certs {
                        builder = builder
                            .set_client_to_sentinel_certificates(certs.clone())
                            .set_client_to_redis_certificates(certs.clone());
                    }
                }
                let mut client = builder.build()?;
                let primary = client.async_get_client().await?;
                let manager = ConnectionManager::new_with_config(primary, config.clone()).await?;
                Ok(Connection::Sentinel(Box::new(SentinelConnection {
                    client: tokio::sync::Mutex::new(client),
                    current: RwLock::new(manager),
                    config,
                    last_resolve: std::sync::Mutex::new(Instant::now()),
                })))
            }
            Topology::Cluster { nodes, auth } => {
                let mut builder = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(1);
                if let Some(user) = &auth.username {
                    builder = builder.username(user);
                }
                if let Some(pass) = &auth.password {
                    builder = builder.password(pass);
                }
                if let Some(certs) = certs.filter(|_| topology.tls()) {
                    builder = builder.certs(certs.clone());
                }
                let access = NodeAccess { auth: auth.clone(), tls: topology.tls(), certs: certs.cloned() };
                Ok(Connection::Cluster(builder.build()?.get_async_connection().await?, access))
            }
        }
    }

    /// A connection handle for one request (all handles are cheap clones).
    pub fn handle(&self) -> Handle {
        match self {
            Connection::Standalone(m) => Handle::Single(m.clone()),
            Connection::Sentinel(s) => Handle::Single(s.current()),
            Connection::Cluster(c, _) => Handle::Cluster(c.clone()),
        }
    }

    /// Sends one command to whichever topology: the primary, or on Cluster the node
    /// that holds its key (any node, for a command without one).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self.handle() {
            Handle::Single(mut c) => cmd.query_async(&mut c).await,
            Handle::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// Sends a pipeline to whichever topology (on Cluster, its commands go to the
    /// nodes of their keys).
    pub async fn query_pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> RedisResult<T> {
        match self.handle() {
            Handle::Single(mut c) => pipe.query_async(&mut c).await,
            Handle::Cluster(mut c) => pipe.query_async(&mut c).await,
        }
    }

    /// Invokes a script on whichever topology, loading it first if Redis does not
    /// know it.
    pub async fn invoke<T: FromRedisValue>(&self, invocation: &ScriptInvocation<'_>) -> RedisResult<T> {
        match self.handle() {
            Handle::Single(mut c) => invocation.invoke_async(&mut c).await,
            Handle::Cluster(mut c) => invocation.invoke_async(&mut c).await,
        }
    }

    /// `cmd`'s answer from every primary: the one server, or each Cluster primary,
    /// for per-node commands such as `INFO` and `CONFIG GET`.
    pub async fn query_each_primary<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<Vec<T>> {
        match self.handle() {
            Handle::Single(mut c) => Ok(vec![cmd.query_async(&mut c).await?]),
            Handle::Cluster(_) => {
                let mut out = Vec::new();
                for mut node in self.cluster_primaries().await? {
                    out.push(cmd.query_async(&mut node).await?);
                }
                Ok(out)
            }
        }
    }

    /// On Cluster, a connection to each primary, for per-node work such as `SCAN`
    /// and `INFO` that a cluster client sends to one node only. Empty otherwise.
    pub async fn cluster_primaries(&self) -> RedisResult<Vec<MultiplexedConnection>> {
        let mut out = Vec::new();
        if let Connection::Cluster(c, access) = self {
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut c.clone()).await?;
            for addr in primary_addresses(&nodes) {
                let scheme = if access.tls { "rediss" } else { "redis" };
                let info = redis::ConnectionInfo::from_str(&format!("{scheme}://{addr}"))?;
                let node = access.auth.apply(info.redis_settings().clone());
                let info = info.set_redis_settings(node);
                let client = match &access.certs {
                    Some(certs) if access.tls => Client::build_with_tls(info, certs.clone())?,
                    _ => Client::open(info)?,
                };
                out.push(client.get_multiplexed_async_connection().await?);
            }
        }
        Ok(out)
    }

    /// Tells the connection a request failed with `err`, so that a Sentinel
    /// connection can look for a new primary.
    pub async fn failed(&self, err: &RedisError) {
        if let Connection::Sentinel(s) = self {
            if err.is_io_error()
                || err.is_connection_dropped()
                || err.is_connection_refusal()
                || err.is_timeout()
                || err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            {
                s.resolve().await;
            }
        }
    }
}

/// `host:port` of every healthy primary in `CLUSTER NODES` output.
fn primary_addresses(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = parts.nth(1)?;
            let flags = parts.next()?;
            let primary = flags.split(',').any(|f| f == "master") && !flags.contains("fail");
            primary.then(|| addr.split('@').next().unwrap_or(addr).to_string())
        })
        .collect()
}

/// One request's connection.
pub enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A primary found through sentinels, re-found after failover.
pub struct SentinelConnection {
    client: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<ConnectionManager>,
    config: ConnectionManagerConfig,
    last_resolve: std::sync::Mutex<Instant>,
}

/// Do not ask the sentinels more often than this while the primary is failing.
const RESOLVE_INTERVAL: Duration = Duration::from_millis(250);

impl SentinelConnection {
    fn current(&self) -> ConnectionManager {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn resolve(&self) {
        let Ok(mut client) = self.client.try_lock() else { return }; // someone else is on it
        {
            let mut last = self.last_resolve.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() < RESOLVE_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        let resolved = async {
            let primary = client.async_get_client().await?;
            ConnectionManager::new_with_config(primary, self.config.clone()).await
        };
        match resolved.await {
            Ok(manager) => {
                tracing::info!("reconnected to the primary named by the sentinels");
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = manager;
            }
            Err(e) => tracing::warn!(error = %e, "sentinels did not name a reachable primary yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_yield_healthy_primaries() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922\n\
                     c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n\
                     d4 127.0.0.1:7003@17003 master,fail - 0 0 3 disconnected\n";
        assert_eq!(primary_addresses(nodes), ["127.0.0.1:7000", "127.0.0.1:7001"]);
    }

    #[test]
    fn parses_each_topology() {
        assert_eq!(
            "redis://:pw@h:6379/2".parse::<Topology>(),
            Ok(Topology::Standalone { url: "redis://:pw@h:6379/2".into() })
        );
        assert_eq!(
            "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/3".parse::<Topology>(),
            Ok(Topology::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "mymaster".into(),
                auth: Auth { username: None, password: Some("pw".into()) },
                db: 3,
            })
        );
        assert_eq!(
            "redis+cluster://a:1,b:2".parse::<Topology>(),
            Ok(Topology::Cluster { nodes: vec!["redis://a:1".into(), "redis://b:2".into()], auth: Auth::default() })
        );
        let tls: Topology = "rediss+cluster://a:1,b:2".parse().unwrap();
        assert_eq!(
            tls,
            Topology::Cluster { nodes: vec!["rediss://a:1".into(), "rediss://b:2".into()], auth: Auth::default() }
        );
        assert!(tls.tls() && "rediss://h:1".parse::<Topology>().unwrap().tls());
        assert!(!"redis+sentinel://s1:26379/m".parse::<Topology>().unwrap().tls());
        assert_eq!(tls.to_string(), "rediss+cluster://a:1,b:2");
        assert!("redis+sentinel://s1:26379".parse::<Topology>().is_err());
        assert!("memcached://x".parse::<Topology>().is_err());
    }
}
