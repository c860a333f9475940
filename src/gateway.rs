//! Assembly: config in, a running gateway out.
//!
//! Builds the state store, sink, pipeline and router from a validated [`Config`],
//! binds the listener, and runs until told to stop. Shutdown happens in the order a
//! load balancer needs: readiness turns 503 at once, the server keeps serving for
//! `http.shutdown_delay` so endpoints can be withdrawn, then stops accepting, lets
//! in-flight requests finish, and finally writes every pending status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{Config, SinkTarget, StateBackend};
use crate::http::{self, AppState, Limits, Readiness};
use crate::pipeline::classify::Classifier;
use crate::pipeline::coalesce::Coalescer;
use crate::pipeline::{Parts, Pipeline, Placement};
use crate::sink::dir::DirSink;
use crate::sink::kube::owners::OwnerCache;
use crate::sink::kube::{KubeOptions, KubeSink};
use crate::sink::Sink;
use crate::state::memory::MemoryStore;
use crate::state::redis::{RedisOptions, RedisStore};
use crate::state::{RateLimit, StateStore};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot use sink directory {path}: {source}")]
    SinkDir { path: String, source: std::io::Error },
    #[error(transparent)]
    State(crate::state::StateError),
    #[error("cannot use the Kubernetes API: {0}")]
    Kube(String),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// A gateway that is listening.
pub struct Running {
    pub addr: SocketAddr,
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Pipeline>,
    /// Where requests go, for tests that wait on what the sink knows.
    pub sink: Arc<dyn Sink>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), StartError>>,
}

impl Running {
    /// Begins shutdown, as SIGTERM does.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for the gateway to finish, after [`Running::shutdown`].
    pub async fn join(self) -> Result<(), StartError> {
        self.task.await.unwrap_or_else(|e| Err(StartError::Serve(std::io::Error::other(e))))
    }
}

/// What a caller may supply instead of discovering it.
#[derive(Default)]
pub struct Overrides {
    /// The Kubernetes client to use instead of the in-cluster or kubeconfig one.
    pub kube_client: Option<kube::Client>,
}

/// Builds everything and starts listening on `config.listen`.
pub async fn start(config: Config, clock: Clock) -> Result<Running, StartError> {
    start_with(config, clock, Overrides::default()).await
}

/// [`start`], with parts supplied by the caller.
pub async fn start_with(config: Config, clock: Clock, overrides: Overrides) -> Result<Running, StartError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let state: Arc<dyn StateStore> = match &config.state {
        StateBackend::Memory => Arc::new(MemoryStore::new(
            config.memory.max_entries,
            config.dedup.window,
            config.storm.rules(),
            clock.clone(),
        )),
        StateBackend::Redis(topology) => {
            let options = RedisOptions {
                topology: topology.clone(),
                tls: config.redis.tls.clone(),
                prefix: config.redis.prefix.clone(),
                window: config.dedup.window,
                storms: config.storm.rules(),
                timeout: config.redis.timeout,
                monitor_interval: config.redis.monitor_interval,
            };
            tracing::info!(state = %config.state, "connecting to Redis");
            Arc::new(RedisStore::connect(options, metrics.clone()).await.map_err(StartError::State)?)
        }
    };
    let mut namespace_labels = None;
    let mut owners: Option<Arc<dyn crate::workload::Owners>> = None;
    let sink: Arc<dyn Sink> = match &config.sink {
        SinkTarget::Dir(path) => Arc::new(
            DirSink::new(path, config.open_horizon())
                .map_err(|source| StartError::SinkDir { path: path.display().to_string(), source })?,
        ),
        SinkTarget::Kube => {
            let client = match overrides.kube_client {
                Some(client) => client,
                // In the cluster: the service account; outside: the kubeconfig.
                None => kube::Client::try_default().await.map_err(|e| StartError::Kube(e.to_string()))?,
            };
            let options = KubeOptions {
                call_timeout: config.kube.call_timeout,
                deadline: config.kube.deadline,
                breaker_failures: config.kube.breaker_failures,
                breaker_cooldown: config.kube.breaker_cooldown,
            };
            let kube = KubeSink::start(client.clone(), options, metrics.clone(), config.kube.sync_timeout)
                .await
                .map_err(|e| StartError::Kube(e.to_string()))?;
            namespace_labels = Some(kube.namespace_labels());
            if config.kube.owner_chain {
                owners = Some(OwnerCache::start(client, &config.kube, metrics.clone()));
            }
            Arc::new(kube)
        }
    };
    let coalescer = Coalescer::new(
        sink.clone(),
        config.dedup.status_interval,
        config.dedup.max_status_writes_per_s,
        metrics.clone(),
    );
    let mut classifier = Classifier::new(&config.classify);
    if let Some(labels) = namespace_labels {
        classifier = classifier.with_namespace_labels(labels);
    }
    let sink_handle = sink.clone();
    let pipeline = Arc::new(Pipeline::new(Parts {
        state,
        sink,
        coalescer,
        classifier,
        storms: config.storm.rules(),
        window_s: config.dedup.window.as_secs() as u32,
        affected_cap: config.storm.affected_resources_cap,
        placement: Placement {
            control_namespace: config.placement.control_namespace.clone(),
            all: config.placement.all_in_control_namespace,
        },
        owners,
        clock: clock.clone(),
        metrics: metrics.clone(),
    }));
    let readiness = Readiness::default();
    let app = AppState {
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        clock,
        limits: Limits {
            body_limit: config.http.body_limit,
            body_budget_wait: config.http.body_budget_wait,
            body_read_timeout: config.http.body_read_timeout,
            request_timeout: config.http.request_timeout,
            retry_after_secs: config.http.retry_after_secs,
            rate_limit: config
                .rate_limit
                .enabled
                .then_some(RateLimit { rate_per_s: config.rate_limit.rate, burst: config.rate_limit.burst }),
            refusal_status: axum::http::StatusCode::from_u16(config.rate_limit.refusal_status)
                .expect("validated: 429 or 503"),
            trusted_proxies: config.rate_limit.trusted_proxies.clone(),
        },
        readiness: readiness.clone(),
        budget: http::BodyBudget::new(config.body_budget(), config.http.body_budget_wait, metrics.clone()),
        cloudevents: Arc::new(config.cloudevents.clone()),
        ingest: Arc::new(config.ingest.clone()),
    };
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(listener, app, config, stopped));
    tracing::info!(%addr, "tidegate listening");
    Ok(Running { addr, readiness, metrics, pipeline, sink: sink_handle, stop, task })
}

async fn run(
    listener: TcpListener,
    app: AppState,
    config: Config,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), StartError> {
    let readiness = app.readiness.clone();
    let pipeline = app.pipeline.clone();
    let (grace, delay) = (config.http.shutdown_grace, config.http.shutdown_delay);
    let (begun, begun_rx) = tokio::sync::oneshot::channel::<()>();
    // When the listener closed: one grace period from then covers both in-flight
    // requests and the last status writes, so delay + grace stays inside the pod's
    // termination grace period.
    let closed = Arc::new(std::sync::OnceLock::<tokio::time::Instant>::new());
    let closed_at = closed.clone();
    let begin = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
        readiness.begin_shutdown();
        tracing::info!(?delay, "shutting down: readiness is now 503");
        tokio::time::sleep(delay).await;
        let _ = closed_at.set(tokio::time::Instant::now());
        let _ = begun.send(());
    };
    let limits = http::ConnectionLimits {
        header_read_timeout: config.http.header_read_timeout,
        max_header_bytes: config.http.max_header_bytes,
        max_connections: config.http.max_connections,
    };
    let metrics = app.metrics.clone();
    let server = http::serve(listener, http::router(app), limits, metrics, begin);
    let result = tokio::select! {
        () = server => Ok(()),
        _ = async {
            if begun_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {
            tracing::warn!(?grace, "in-flight requests did not finish within the shutdown grace period");
            Ok(())
        }
    };
    let used = closed.get().map_or(Duration::ZERO, |at| at.elapsed());
    pipeline.drain(grace.saturating_sub(used).max(Duration::from_secs(1))).await;
    tracing::info!("tidegate stopped");
    result
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let running = start(config, Clock::System).await?;
    shutdown_signal().await;
    running.shutdown();
    running.join().await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
