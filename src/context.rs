//! What every component is built with, besides its own configuration section: the
//! clock, the metrics, the one Kubernetes client, and for `tidegate doctor` the load
//! to check against.
//!
//! A section builds its component with `build(&self, &Context)` and checks what it
//! names with `doctor(&self, &Context)`; [`crate::gateway`] makes one `Context` and
//! hands it to each. This module holds no rule and never reads the configuration:
//! what a component needs from another section travels in its own settings.

use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::capacity::Load;
use crate::clock::Clock;
use crate::telemetry::Metrics;

/// Shared by every component that a gateway (or a doctor run) builds.
pub struct Context {
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// The load Redis must hold, for doctor's headroom check; unset, it is skipped.
    pub load: Option<Load>,
    kube: OnceCell<kube::Client>,
}

impl Context {
    pub fn new(clock: Clock, metrics: Arc<Metrics>) -> Self {
        Context { clock, metrics, load: None, kube: OnceCell::new() }
    }

    /// With `client` as the Kubernetes client, instead of the in-cluster or
    /// kubeconfig one.
    pub fn with_kube_client(self, client: Option<kube::Client>) -> Self {
        Context { kube: OnceCell::new_with(client), ..self }
    }

    /// With the load doctor checks Redis' headroom against.
    pub fn with_load(self, load: Option<Load>) -> Self {
        Context { load, ..self }
    }

    /// The Kubernetes client: the one given, or else the service account's in a
    /// cluster and the kubeconfig's outside, made once and shared by every component
    /// that asks.
    pub async fn kube_client(&self) -> Result<kube::Client, kube::Error> {
        self.kube.get_or_try_init(kube::Client::try_default).await.cloned()
    }

    /// The Kubernetes client, if one was given or a component has made it.
    pub fn kube_client_if_any(&self) -> Option<kube::Client> {
        self.kube.get().cloned()
    }
}
