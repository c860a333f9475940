//! Where RemediationRequests go (`sink`), and how the sink builds and checks itself
//! from the sections it reads.
//!
//! The one place that tells the sinks apart: assembly and `tidegate doctor` ask
//! [`Settings`] for a sink or for checks and never match on the target.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dir::DirSink;
use super::kube::{KubeConfig, KubeSink};
use super::{Sink, SinkError};
use crate::check::Check;
use crate::context::Context;
use crate::section::ConfigError;
use crate::workload::{NamespaceLabels, RemediateLabels};

/// Where RemediationRequests go.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SinkTarget {
    /// Manifests in a local directory.
    Dir(PathBuf),
    /// RemediationRequest custom resources through the Kubernetes API.
    Kube,
}

/// A sink that is none of the sinks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected \"dir:<path>\" or \"kube\", got {0:?}")]
pub struct UnknownSink(String);

impl FromStr for SinkTarget {
    type Err = UnknownSink;
    fn from_str(s: &str) -> Result<Self, UnknownSink> {
        match s {
            "kube" => Ok(SinkTarget::Kube),
            _ => match s.strip_prefix("dir:") {
                Some(path) => Ok(SinkTarget::Dir(PathBuf::from(path))),
                None => Err(UnknownSink(s.to_string())),
            },
        }
    }
}

impl TryFrom<String> for SinkTarget {
    type Error = UnknownSink;
    fn try_from(s: String) -> Result<Self, UnknownSink> {
        s.parse()
    }
}

impl fmt::Display for SinkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkTarget::Dir(path) => write!(f, "dir:{}", path.display()),
            SinkTarget::Kube => f.write_str("kube"),
        }
    }
}

impl Serialize for SinkTarget {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// What the sink is built from: the target, the `kube` section, and how long an
/// incident can stay open without a write to its request.
#[derive(Clone, Debug)]
pub struct Settings {
    pub target: SinkTarget,
    pub kube: KubeConfig,
    /// How far back the directory sink indexes manifests (`Config::open_horizon`).
    pub horizon: Duration,
    /// Whether scope reads workloads' labels, which the kube sink's grants then
    /// include (`scope.mode` opt-in or opt-out).
    pub scope_labels: bool,
}

/// A sink, and what it learned of the cluster on the way, for the pipeline.
pub struct Built {
    pub sink: Arc<dyn Sink>,
    /// The namespaces' labels, when the sink watches a cluster.
    pub namespace_labels: Option<Arc<dyn NamespaceLabels>>,
    /// The `tidegate.dev/remediate` labels it caches, for scope, when it watches a
    /// cluster.
    pub remediate_labels: Option<Arc<dyn RemediateLabels>>,
    /// The Kubernetes client the sink uses, if it uses one.
    pub kube_client: Option<kube::Client>,
}

/// Why a sink could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot use sink directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot configure a Kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    #[error("cannot use the Kubernetes API: {0}")]
    Kube(#[source] SinkError),
}

impl Settings {
    /// What no sink can be built from, naming the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let SinkTarget::Dir(path) = &self.target {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::invalid("sink", "dir: needs a path, as in dir:./remediations"));
            }
        }
        Ok(())
    }

    /// The sink, once it can vouch for open incidents: the directory read, or the
    /// cluster's requests and namespaces listed.
    pub async fn build(&self, ctx: &Context) -> Result<Built, BuildError> {
        match &self.target {
            SinkTarget::Dir(path) => {
                let sink = DirSink::new(path, self.horizon)
                    .map_err(|source| BuildError::Dir { path: path.display().to_string(), source })?;
                Ok(Built { sink: Arc::new(sink), namespace_labels: None, remediate_labels: None, kube_client: None })
            }
            SinkTarget::Kube => {
                let client = ctx.kube_client().await.map_err(BuildError::KubeClient)?;
                let kube =
                    KubeSink::start(client.clone(), &self.kube, ctx.metrics.clone()).await.map_err(BuildError::Kube)?;
                let (namespace_labels, remediate_labels) =
                    (Some(kube.namespace_labels()), Some(kube.remediate_labels()));
                Ok(Built { sink: Arc::new(kube), namespace_labels, remediate_labels, kube_client: Some(client) })
            }
        }
    }

    /// `tidegate doctor`'s checks of the sink: the directory, or the cluster; the
    /// other's are reported skipped, so the report says they were not looked at.
    pub async fn doctor(&self, ctx: &Context) -> Vec<Check> {
        match &self.target {
            SinkTarget::Dir(path) => {
                vec![super::dir::doctor::writable(path), Check::skip("kubernetes", "the sink is a directory")]
            }
            SinkTarget::Kube => {
                let mut checks = vec![Check::skip("sink dir", "the sink is kube")];
                checks
                    .extend(super::kube::doctor::checks(&self.kube, self.scope_labels, ctx.kube_client_if_any()).await);
                checks
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SinkTarget;

    #[test]
    fn targets_parse() {
        assert_eq!("kube".parse::<SinkTarget>(), Ok(SinkTarget::Kube));
        assert_eq!("dir:/x".parse::<SinkTarget>(), Ok(SinkTarget::Dir("/x".into())));
        assert!("file:/x".parse::<SinkTarget>().is_err());
    }
}
