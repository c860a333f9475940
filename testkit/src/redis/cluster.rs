//! A three-primary Cluster.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use ::redis::RedisResult;

use super::*;

/// Three cluster primaries (no replicas) covering all 16384 slots. Killed on drop.
pub struct ClusterSetup {
    nodes: Vec<RedisServer>,
}

impl ClusterSetup {
    /// Starts three nodes, joins them with `redis-cli --cluster create` and waits until
    /// every node reports `cluster_state:ok` and knows all three nodes.
    pub fn start() -> ClusterSetup {
        Self::start_with(None)
    }

    /// The same, with each node also serving `tls` on a TLS port and the nodes
    /// talking TLS among themselves (`tls-cluster yes`). Clients that come in over
    /// TLS are told the nodes' TLS ports; the harness keeps to the plain ones.
    pub fn start_with(tls: Option<ServerTls>) -> ClusterSetup {
        let extra_args = match tls {
            Some(_) => vec!["--tls-cluster".into(), "yes".into()],
            None => Vec::new(),
        };
        let options = ServerOptions { cluster: true, tls, extra_args, ..Default::default() };
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start(options.clone())).collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        create.args(nodes.iter().map(RedisServer::addr));
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        run_to_completion(create, Duration::from_secs(30));

        let setup = ClusterSetup { nodes };
        for node in &setup.nodes {
            let ok = poll_until(CONVERGE_TIMEOUT, STATE_INTERVAL, || {
                let info = cluster_info(node.port).ok()?;
                let field = |k: &str| info.get(k).map(String::as_str);
                (field("cluster_state") == Some("ok")
                    && field("cluster_known_nodes") == Some("3")
                    && field("cluster_slots_ok") == Some("16384"))
                .then_some(())
            });
            if ok.is_none() {
                panic!(
                    "cluster node {} never reached cluster_state:ok: {:?}; log:\n{}",
                    node.port,
                    cluster_info(node.port),
                    node.log()
                );
            }
        }
        setup
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// `redis://127.0.0.1:PORT` of each node, for `ClusterClient::new`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `rediss://127.0.0.1:TLS_PORT` of each node of a TLS cluster.
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::tls_url).collect()
    }

    pub fn client(&self) -> ::redis::cluster::ClusterClient {
        ::redis::cluster::ClusterClient::new(self.urls()).expect("cluster client")
    }
}

fn cluster_info(port: u16) -> RedisResult<HashMap<String, String>> {
    let mut con = connect(port)?;
    let text: String = ::redis::cmd("CLUSTER").arg("INFO").query(&mut con)?;
    Ok(parse_info(&text))
}
