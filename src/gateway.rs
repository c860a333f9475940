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
use crate::config::Config;
use crate::context::Context;
use crate::http::{self, AppState, Readiness};
use crate::pipeline::{Parts, Pipeline};
use crate::sink::Sink;
use crate::telemetry::Metrics;
use crate::workload::owners::OwnerCache;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Sink(#[from] crate::sink::BuildError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot configure a Kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::BuildError),
    #[error(transparent)]
    Tls(#[from] crate::http::tls::TlsError),
    #[error(transparent)]
    Silences(#[from] crate::silence::StartError),
    #[error(transparent)]
    WorkloadLabels(#[from] crate::workload::labels::NotListed),
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
    /// The silences honoured, when silences are enabled.
    pub silences: Option<crate::silence::Running>,
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
    for deprecated in &config.deprecated {
        tracing::warn!("{deprecated}");
    }
    let tls = config.http.tls.build()?;
    let metrics = Arc::new(Metrics::new());
    let ctx = Context::new(clock.clone(), metrics.clone()).with_kube_client(overrides.kube_client);
    let state = config.state_settings().build(&ctx).await?;
    let replays = state.clone();
    let built = config.sink_settings().build(&ctx).await?;
    let owner_cache = match &built.kube_client {
        Some(client) if config.kube.owner_chain => {
            Some(OwnerCache::start(client.clone(), config.kube.owner_lookup_timeout, metrics.clone()))
        }
        _ => None,
    };
    // Scope reads the workloads' labels too, from caches listed before any signal
    // is taken: a workload labelled "false" must never look unlabelled.
    let remediate_labels = match (&built.kube_client, built.remediate_labels) {
        (Some(client), Some(namespaces)) if config.scope.reads_labels() => Some(
            crate::workload::labels::start(
                client.clone(),
                owner_cache.iter().flat_map(|cache| cache.labels()).collect(),
                namespaces,
                config.kube.sync_timeout,
            )
            .await?,
        ),
        (_, labels) => labels,
    };
    let owners = owner_cache.map(|cache| cache as Arc<dyn crate::workload::Owners>);
    let silences =
        crate::silence::start(&config.silence_settings(), built.kube_client.clone(), clock.clone(), metrics.clone())
            .await?;
    let (sink, namespace_labels) = (built.sink, built.namespace_labels);
    let sink_handle = sink.clone();
    let reviews_tokens = config.auth.enabled() && config.auth.kinds().contains(&crate::auth::kind::KUBERNETES);
    let kube_client = match reviews_tokens {
        true => Some(ctx.kube_client().await.map_err(StartError::KubeClient)?),
        false => ctx.kube_client_if_any(),
    };
    let kinds: Vec<_> = crate::ingest::SOURCES.iter().map(|s| (s.route, s.authenticators())).collect();
    let routes: Vec<_> = kinds.iter().map(|(route, kinds)| (*route, kinds.as_slice())).collect();
    let auth = Arc::new(config.auth.build(kube_client, &routes)?);
    metrics.zero(&vocabulary(&config));
    if config.auth.enabled() {
        tracing::info!(authenticators = ?config.auth.kinds(), "senders must authenticate");
    } else if config.auth.none {
        tracing::warn!(listen = %config.listen, "auth: none: anyone who can reach the listener may submit signals");
    }
    let parts = Parts {
        state,
        sink,
        owners,
        namespace_labels,
        remediate_labels,
        clock: clock.clone(),
        metrics: metrics.clone(),
    };
    let mut pipeline = Pipeline::build(&config.pipeline_settings(), parts);
    if let Some(silences) = &silences {
        pipeline = pipeline.with_silences(silences.keeper.clone());
    }
    let pipeline = Arc::new(pipeline);
    recover_holds(&pipeline, config.dedup.window).await;
    settle_flapping(&pipeline, config.flap.window / 10);
    let readiness = Readiness::default();
    let app = AppState::new(http::App {
        pipeline: pipeline.clone(),
        metrics: metrics.clone(),
        clock,
        config: Arc::new(config.http_settings()),
        readiness: readiness.clone(),
        budget: http::BodyBudget::new(config.http.body_budget(), config.http.body_budget_wait, metrics.clone()),
        auth,
        replays,
    });
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(StartError::Serve)?;
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(listener, tls, app, config, stopped));
    tracing::info!(%addr, "tidegate listening");
    Ok(Running { addr, readiness, metrics, pipeline, sink: sink_handle, silences, stop, task })
}

/// The label values of every metric series made at 0 at start, each list from where
/// its values are defined.
fn vocabulary(config: &Config) -> crate::telemetry::Vocabulary {
    use crate::ingest::IngestError;
    use crate::pipeline::OutcomeStatus;
    use crate::state::StormKind;
    let outcomes = [
        OutcomeStatus::Created,
        OutcomeStatus::Duplicate,
        OutcomeStatus::Resolved,
        OutcomeStatus::Heartbeat,
        OutcomeStatus::BackingOff { until_s: 0 },
        OutcomeStatus::Held,
        OutcomeStatus::OutOfScope,
        OutcomeStatus::Silenced,
        OutcomeStatus::Inhibited,
        OutcomeStatus::Acknowledged { recorded: true },
        OutcomeStatus::Acknowledged { recorded: false },
    ];
    // The kube sink's verbs, and the owner lookups' when they run.
    let kube_verbs = match config.sink {
        crate::sink::SinkTarget::Kube if config.kube.owner_chain => {
            vec!["get", "create", "update_status", "patch", "get_metadata"]
        }
        crate::sink::SinkTarget::Kube => vec!["get", "create", "update_status", "patch"],
        crate::sink::SinkTarget::Dir(_) => Vec::new(),
    };
    let aggregated = OutcomeStatus::Aggregated { opened: false };
    crate::telemetry::Vocabulary {
        signal_types: crate::ingest::signal_types().map(|t| t.as_str()).collect(),
        signal_outcomes: outcomes
            .into_iter()
            .chain([aggregated])
            .map(OutcomeStatus::as_str)
            .chain(["failed"])
            .collect(),
        rejection_reasons: [http::problem::Problem::REASONS, crate::auth::AuthError::REASONS, IngestError::KINDS]
            .concat(),
        state_error_reasons: crate::state::StateError::CAUSES.to_vec(),
        storm_types: [StormKind::Rate, StormKind::Pattern].map(StormKind::as_str).to_vec(),
        source_classes: http::SOURCE_CLASSES.to_vec(),
        senders: config.auth.senders(),
        tls_failure_reasons: http::tls::Failure::ALL.map(http::tls::Failure::reason).to_vec(),
        held_back_reasons: crate::pipeline::backoff::Hold::REASONS.to_vec(),
        sink_ops: match config.silence.enabled {
            true => vec!["create", "update_status", crate::pipeline::status_writer::SILENCE_OP],
            false => vec!["create", "update_status"],
        },
        sink_outcomes: ["ok"].iter().chain(crate::sink::SinkError::LABELS).copied().collect(),
        kube_verbs,
        kube_outcomes: crate::kube_api::OUTCOMES.to_vec(),
    }
}

async fn run(
    listener: TcpListener,
    tls: Option<http::tls::Tls>,
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
    let metrics = app.metrics.clone();
    let server = http::serve(listener, http::router(app), &config.http, tls, metrics, begin);
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

/// Teaches the state store the inhibit rules' sources the sink holds open, now and
/// once per dedup window after, for as long as the pipeline lives: a restart or a
/// Redis that lost its keys holds targets back again within one window at most,
/// and at once after a restart.
async fn recover_holds(pipeline: &Arc<Pipeline>, every: Duration) {
    async fn once(pipeline: &Pipeline) {
        match pipeline.recover_holds().await {
            Ok(0) => {}
            Ok(taught) => tracing::info!(taught, "inhibit rules' sources taught again from the sink"),
            Err(e) => tracing::warn!(error = %e, "could not teach the inhibit rules' sources from the sink"),
        }
    }
    once(pipeline).await;
    let pipeline = Arc::downgrade(pipeline);
    tokio::spawn(async move {
        tokio::time::sleep(every).await;
        while let Some(pipeline) = pipeline.upgrade() {
            once(&pipeline).await;
            drop(pipeline);
            tokio::time::sleep(every).await;
        }
    });
}

/// Clears the `Flapping` condition of requests whose incident made no transition
/// for a window, every `every` (a tenth of `flap.window`, from 1 s to 5 min: a mark
/// clears that late at most), for as long as the pipeline lives.
fn settle_flapping(pipeline: &Arc<Pipeline>, every: Duration) {
    let every = every.clamp(Duration::from_secs(1), Duration::from_secs(300));
    let pipeline = Arc::downgrade(pipeline);
    tokio::spawn(async move {
        tokio::time::sleep(every).await;
        while let Some(pipeline) = pipeline.upgrade() {
            match pipeline.settle_flapping().await {
                Ok(swept) if swept.cleared > 0 => tracing::info!(cleared = swept.cleared, "flapping requests settled"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not look for flapping requests that settled"),
            }
            drop(pipeline);
            tokio::time::sleep(every).await;
        }
    });
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
