//! Metrics, logging and traces ([`trace`]).
//!
//! One [`Metrics`] value owns the one `prometheus-client` registry; components get
//! an `Arc<Metrics>` and increment typed families. An error's label value comes
//! from its type's `label()` method, so each error maps to a metric label in one
//! place. Every series whose label values are a fixed set is exported at 0 from the
//! start ([`Metrics::zero`]), as the Prometheus instrumentation guidelines advise:
//! `increase()` then sees the first event after a start, and a dashboard shows 0,
//! not "no data".

pub mod trace;

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `log`: what is logged, and how.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `tidegate=debug`.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, filter: "info".into() }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub source: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StormLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriterLabels {
    /// The first 8 hex digits of every tally writer id this process puts in request
    /// statuses.
    pub writer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub environment: String,
    pub priority: String,
}

/// An authenticated sender: a configured name (a source, user or authenticator),
/// never a name a client chose, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderLabels {
    pub sender: String,
    pub method: &'static str,
}

/// A sender by its configured name alone (see [`SenderLabels`]), or
/// `unauthenticated`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SenderNameLabels {
    pub sender: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceClassLabels {
    pub source_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub verb: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub signals: Family<SignalLabels, Counter>,
    pub requests_created: Counter,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub http_in_flight: Gauge,
    pub body_bytes_in_flight: Gauge,
    pub rejections: Family<ReasonLabels, Counter>,
    pub state_errors: Family<ReasonLabels, Counter>,
    pub state_entries: Gauge,
    pub sink_writes: Family<SinkLabels, Counter>,
    pub status_coalesced: Counter,
    pub status_pending: Gauge,
    pub status_write_lag: Gauge<f64, AtomicU64>,
    pub status_tallies: Gauge,
    pub status_writer: Family<WriterLabels, Gauge>,
    pub redis_used_memory: Gauge,
    pub redis_maxmemory: Gauge,
    pub redis_fragmentation: Gauge<f64, AtomicU64>,
    pub redis_keys: Gauge,
    pub redis_memory_config_risky: Gauge,
    pub ready: Gauge,
    pub kube_breaker_open: Gauge,
    pub storms: Family<StormLabels, Counter>,
    pub alerts_aggregated: Counter,
    pub storm_windows_open: Gauge,
    pub rate_limited: Family<SourceClassLabels, Counter>,
    pub authenticated: Family<SenderLabels, Counter>,
    pub classifications: Family<ClassLabels, Counter>,
    pub api_calls: Family<ApiLabels, Counter>,
    pub owner_cache_objects: Family<KindLabels, Gauge>,
    pub heartbeat_last_seen: Family<SenderNameLabels, Gauge<f64, AtomicU64>>,
    pub sender_last_seen: Family<SenderNameLabels, Gauge<f64, AtomicU64>>,
    pub sender_expected_interval: Family<SenderNameLabels, Gauge<f64, AtomicU64>>,
    pub held_back: Family<ReasonLabels, Counter>,
    pub signals_silenced: Family<SourceLabels, Counter>,
    pub silences_ignored: Family<ReasonLabels, Counter>,
    pub silences_active: Gauge,
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    pub flap_transitions: Family<SourceLabels, Counter>,
    pub flapping_marked: Counter,
    pub flapping_cleared: Counter,
}

/// The label values of the families whose values are a fixed set: each series is
/// made at 0 by [`Metrics::zero`]. Each list comes from where its values are
/// defined.
#[derive(Clone, Debug, Default)]
pub struct Vocabulary {
    /// `signals_received_total`: every signal type by every outcome.
    pub signal_types: Vec<&'static str>,
    pub signal_outcomes: Vec<&'static str>,
    /// `http_rejections_total`.
    pub rejection_reasons: Vec<&'static str>,
    /// `state_errors_total`.
    pub state_error_reasons: Vec<&'static str>,
    /// `storms_detected_total`.
    pub storm_types: Vec<&'static str>,
    /// `rate_limited_total`.
    pub source_classes: Vec<&'static str>,
    /// `authenticated_requests_total`: the configured senders and their methods.
    pub senders: Vec<(String, &'static str)>,
    /// `tls_handshake_failures_total`.
    pub tls_failure_reasons: Vec<&'static str>,
    /// `signals_held_back_total`.
    pub held_back_reasons: Vec<&'static str>,
    /// `sink_writes_total`: operations by outcome.
    pub sink_ops: Vec<&'static str>,
    pub sink_outcomes: Vec<&'static str>,
    /// `kube_api_calls_total`: the verbs this configuration calls (none without a
    /// cluster) by outcome.
    pub kube_verbs: Vec<&'static str>,
    pub kube_outcomes: Vec<&'static str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidegate");
        let signals = Family::<SignalLabels, Counter>::default();
        registry.register("signals_received", "Signals received, by source and outcome", signals.clone());
        let requests_created = Counter::default();
        registry.register("remediation_requests_created", "RemediationRequests created", requests_created.clone());
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register("http_request_duration_seconds", "HTTP request latency", http_duration.clone());
        let http_in_flight = Gauge::default();
        registry.register("http_requests_in_flight", "HTTP requests being served", http_in_flight.clone());
        let body_bytes_in_flight = Gauge::default();
        registry.register(
            "http_body_bytes_in_flight",
            "Request-body bytes held by requests being read or decided (bounded by http.body_budget)",
            body_bytes_in_flight.clone(),
        );
        let rejections = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "http_rejections",
            "Requests refused before a decision (4xx, and 503 for rate limits and the body budget), by reason",
            rejections.clone(),
        );
        let state_errors = Family::<ReasonLabels, Counter>::default();
        registry.register("state_errors", "State store failures answered 503, by cause", state_errors.clone());
        let state_entries = Gauge::default();
        registry.register("state_entries", "Entries held by the state store", state_entries.clone());
        let sink_writes = Family::<SinkLabels, Counter>::default();
        registry.register("sink_writes", "Sink writes, by operation and outcome", sink_writes.clone());
        let status_coalesced = Counter::default();
        registry.register(
            "status_updates_coalesced",
            "Status updates folded into a later write instead of written",
            status_coalesced.clone(),
        );
        let status_pending = Gauge::default();
        registry.register(
            "status_updates_pending",
            "RemediationRequests and RemediationSilences with a status write pending",
            status_pending.clone(),
        );
        let status_write_lag = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "status_write_lag_seconds",
            "How long past its due time the oldest due status write waited, when writes were last taken",
            status_write_lag.clone(),
        );
        let status_tallies = Gauge::default();
        registry.register(
            "status_tallies",
            "Incidents this process counts repeats of: seen repeating within the last 2 minutes",
            status_tallies.clone(),
        );
        let status_writer = Family::<WriterLabels, Gauge>::default();
        registry.register(
            "status_writer",
            "1, labelled with this process's half of the writer ids of its tallies in request statuses",
            status_writer.clone(),
        );
        let redis_used_memory = Gauge::default();
        registry.register("redis_used_memory_bytes", "Redis INFO used_memory", redis_used_memory.clone());
        let redis_maxmemory = Gauge::default();
        registry.register("redis_maxmemory_bytes", "Redis maxmemory (0: unbounded)", redis_maxmemory.clone());
        let redis_fragmentation = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "redis_mem_fragmentation_ratio",
            "Redis INFO mem_fragmentation_ratio",
            redis_fragmentation.clone(),
        );
        let redis_keys = Gauge::default();
        registry.register("redis_keys", "Keys under tidegate's prefix", redis_keys.clone());
        let redis_memory_config_risky = Gauge::default();
        registry.register(
            "redis_memory_config_risky",
            "1 when Redis may evict dedup state (maxmemory-policy allkeys-*) or has no maxmemory",
            redis_memory_config_risky.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 when /readyz would answer 200, as of the last scrape", ready.clone());
        let kube_breaker_open = Gauge::default();
        registry.register(
            "kube_breaker_open",
            "1 while the circuit breaker to the Kubernetes API is open",
            kube_breaker_open.clone(),
        );
        let storms = Family::<StormLabels, Counter>::default();
        registry.register("storms_detected", "Storm aggregation windows opened, by type", storms.clone());
        let alerts_aggregated = Counter::default();
        registry.register(
            "alerts_aggregated",
            "Alerts folded into a storm's aggregated request",
            alerts_aggregated.clone(),
        );
        let storm_windows_open = Gauge::default();
        registry.register(
            "storm_windows_open",
            "Storm windows this replica saw that are still open",
            storm_windows_open.clone(),
        );
        let authenticated = Family::<SenderLabels, Counter>::default();
        registry.register(
            "authenticated_requests",
            "Requests whose sender was authenticated, by sender (a configured name) and method",
            authenticated.clone(),
        );
        let rate_limited = Family::<SourceClassLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused for their source's rate limit, by source class",
            rate_limited.clone(),
        );
        let classifications = Family::<ClassLabels, Counter>::default();
        registry.register(
            "classifications",
            "Requests classified, by environment and priority",
            classifications.clone(),
        );
        let api_calls = Family::<ApiLabels, Counter>::default();
        registry.register("kube_api_calls", "Kubernetes API calls, by verb and outcome", api_calls.clone());
        let owner_cache_objects = Family::<KindLabels, Gauge>::default();
        registry.register(
            "kube_owner_cache_objects",
            "Objects in the owner-reference caches, by kind",
            owner_cache_objects.clone(),
        );
        let heartbeat_last_seen = Family::<SenderNameLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "heartbeat_last_seen_timestamp_seconds",
            "When this process last took a heartbeat alert (heartbeat.alertnames) from each sender",
            heartbeat_last_seen.clone(),
        );
        let sender_last_seen = Family::<SenderNameLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sender_last_seen_timestamp_seconds",
            "When this process last heard from each sender heartbeat.expect names (its start for one not heard yet)",
            sender_last_seen.clone(),
        );
        let sender_expected_interval = Family::<SenderNameLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sender_expected_interval_seconds",
            "The longest each sender heartbeat.expect names may normally stay silent",
            sender_expected_interval.clone(),
        );
        let held_back = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "signals_held_back",
            "Signals that opened no request because their incident's last request holds it back, by reason \
             (failure_backoff, manual_review); each is counted on that request",
            held_back.clone(),
        );
        let signals_silenced = Family::<SourceLabels, Counter>::default();
        registry.register(
            "signals_silenced",
            "Firing signals a silence kept from opening a request, by source",
            signals_silenced.clone(),
        );
        let silences_ignored = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "silences_ignored",
            "Silences the gateway ignores (too long, bad matcher or time interval), by reason; once per silence and process",
            silences_ignored.clone(),
        );
        let silences_active = Gauge::default();
        registry.register("silences_active", "Silences active now", silences_active.clone());
        let tls_handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by reason (a client certificate refused, not TLS, timed out)",
            tls_handshake_failures.clone(),
        );
        let flap_transitions = Family::<SourceLabels, Counter>::default();
        registry.register(
            "flap_transitions",
            "Firing signals of an incident whose last signal was a resolution (firing, resolved, firing again), by source",
            flap_transitions.clone(),
        );
        let flapping_marked = Counter::default();
        registry.register(
            "flapping_marked",
            "Times a request was marked flapping (more than flap.threshold transitions within flap.window)",
            flapping_marked.clone(),
        );
        let flapping_cleared = Counter::default();
        registry.register(
            "flapping_cleared",
            "Times a request's Flapping condition was cleared, flap.window after its incident's last transition",
            flapping_cleared.clone(),
        );
        Metrics {
            registry,
            signals,
            requests_created,
            http_duration,
            http_in_flight,
            body_bytes_in_flight,
            rejections,
            state_errors,
            state_entries,
            sink_writes,
            status_coalesced,
            status_pending,
            status_write_lag,
            status_tallies,
            status_writer,
            redis_used_memory,
            redis_maxmemory,
            redis_fragmentation,
            redis_keys,
            redis_memory_config_risky,
            ready,
            kube_breaker_open,
            storms,
            alerts_aggregated,
            storm_windows_open,
            rate_limited,
            authenticated,
            classifications,
            api_calls,
            owner_cache_objects,
            heartbeat_last_seen,
            sender_last_seen,
            sender_expected_interval,
            held_back,
            signals_silenced,
            silences_ignored,
            silences_active,
            tls_handshake_failures,
            flap_transitions,
            flapping_marked,
            flapping_cleared,
        }
    }

    /// Makes every series of `vocabulary` at 0 (a series already there keeps its
    /// value: adding 0 is how a counter is made without counting).
    pub fn zero(&self, vocabulary: &Vocabulary) {
        for &source in &vocabulary.signal_types {
            self.flap_transitions.get_or_create(&SourceLabels { source }).inc_by(0);
            for &outcome in &vocabulary.signal_outcomes {
                self.signals.get_or_create(&SignalLabels { source, outcome }).inc_by(0);
            }
        }
        for &reason in &vocabulary.rejection_reasons {
            self.rejections.get_or_create(&ReasonLabels { reason }).inc_by(0);
        }
        for &reason in &vocabulary.state_error_reasons {
            self.state_errors.get_or_create(&ReasonLabels { reason }).inc_by(0);
        }
        for &r#type in &vocabulary.storm_types {
            self.storms.get_or_create(&StormLabels { r#type }).inc_by(0);
        }
        for &source_class in &vocabulary.source_classes {
            self.rate_limited.get_or_create(&SourceClassLabels { source_class }).inc_by(0);
        }
        for (sender, method) in &vocabulary.senders {
            self.authenticated.get_or_create(&SenderLabels { sender: sender.clone(), method }).inc_by(0);
        }
        for &reason in &vocabulary.tls_failure_reasons {
            self.tls_handshake_failures.get_or_create(&ReasonLabels { reason }).inc_by(0);
        }
        for &reason in &vocabulary.held_back_reasons {
            self.held_back.get_or_create(&ReasonLabels { reason }).inc_by(0);
        }
        for &op in &vocabulary.sink_ops {
            for &outcome in &vocabulary.sink_outcomes {
                self.sink_writes.get_or_create(&SinkLabels { op, outcome }).inc_by(0);
            }
        }
        for &verb in &vocabulary.kube_verbs {
            for &outcome in &vocabulary.kube_outcomes {
                self.api_calls.get_or_create(&ApiLabels { verb, outcome }).inc_by(0);
            }
        }
    }

    /// Counts one signal outcome.
    pub fn signal(&self, source: &'static str, outcome: &'static str) {
        self.signals.get_or_create(&SignalLabels { source, outcome }).inc();
    }

    /// Counts a state store failure (answered 503) by cause.
    pub fn state_error(&self, reason: &'static str) {
        self.state_errors.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Installs the global tracing subscriber: the log, and the spans of [`trace`] when
/// `trace.otlp_endpoint` is set, exported from `runtime`. Call once, from the binary,
/// and hold the returned [`trace::Traces`] until the runtime stops.
pub fn init_logging(
    config: &LogConfig,
    traces: &trace::TraceConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<trace::Traces, trace::TraceError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let mut filter = tracing_subscriber::EnvFilter::try_new(&config.filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(trace::hidden_from_log());
    if let Some(audit) = crate::audit::keep(&config.filter) {
        filter = filter.add_directive(audit);
    }
    let (spans, sender) = trace::layer(traces, runtime)?;
    match spans {
        // The filter for the whole subscriber: a span it turns off is never made.
        None => tracing_subscriber::registry().with(filter).with(log_layer(config.format)).init(),
        // The filter for the log only: the spans still reach the trace layer.
        Some(spans) => {
            tracing_subscriber::registry().with(log_layer(config.format).with_filter(filter)).with(spans).init()
        }
    }
    Ok(sender)
}

fn log_layer<S>(format: LogFormat) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        // Colours only for a person at a terminal: a container's log (kubectl logs, a
        // collector) would carry the escape codes as text.
        LogFormat::Text => {
            tracing_subscriber::fmt::layer().with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).boxed()
        }
    }
}
