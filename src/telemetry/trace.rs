//! Traces: OpenTelemetry spans of a webhook's way through the gateway, sent to an
//! OTLP/HTTP collector (protobuf) when `trace.otlp_endpoint` is set.
//!
//! The spans are `tracing` spans with the target [`TARGET`]:
//! - `receive`: one HTTP request to a source's route; the child of the caller's span
//!   when the request carries a W3C `traceparent`;
//! - `parse`: the source's adapter turning the body into signals;
//! - `decide`: one state-store round trip (`state.op` names which);
//! - `create` and `update_status`: sink writes. A status write happens later, for
//!   many alerts at once, so it starts a trace of its own.
//!
//! A request created in a sampled trace carries the trace id in the annotation
//! [`crate::remediation::TRACE_ID_ANNOTATION`].
//!
//! The log never shows these spans: its filter turns [`TARGET`] off. So with tracing
//! off no layer wants them, and each costs one cached callsite check. Nothing here
//! may hold up a request: spans are exported in batches from a thread of the SDK's
//! own, which drops spans when its queue is full rather than wait.

use std::time::Duration;

use axum::http::{HeaderMap, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_http::{Bytes, HeaderExtractor, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tracing::{Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::section::ConfigError;

/// The `tracing` target of every span that becomes an OpenTelemetry span.
pub const TARGET: &str = "tidegate::trace";

/// `trace`: OpenTelemetry traces.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// Base URL of an OTLP/HTTP collector, such as `http://otel-collector:4318`:
    /// spans are posted to `/v1/traces` under it, as protobuf. Unset: tracing is
    /// off, and no span is made.
    pub otlp_endpoint: Option<String>,
    /// Share of the traces that start here which are recorded, from 0 to 1. A
    /// request with a `traceparent` follows its caller's choice instead.
    pub sample_ratio: f64,
    /// The spans' `service.name`.
    pub service_name: String,
    /// How long one export to the collector may take.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// How often batched spans are sent.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub export_interval: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            otlp_endpoint: None,
            sample_ratio: 0.1,
            service_name: "tidegate".into(),
            timeout: Duration::from_secs(10),
            export_interval: Duration::from_secs(5),
        }
    }
}

impl TraceConfig {
    /// Whether spans are made and sent.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::invalid(key, reason));
        if let Some(endpoint) = &self.otlp_endpoint {
            traces_url(endpoint).map_err(|e| ConfigError::refused("trace.otlp_endpoint", e))?;
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid("trace.sample_ratio", "must be between 0 and 1".into());
        }
        if self.service_name.is_empty() {
            return invalid("trace.service_name", "must not be empty".into());
        }
        if self.timeout < Duration::from_millis(100) {
            return invalid("trace.timeout", "must be at least 100ms".into());
        }
        if self.export_interval < Duration::from_millis(10) {
            return invalid("trace.export_interval", "must be at least 10ms".into());
        }
        Ok(())
    }
}

/// Why a collector endpoint cannot be posted to.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{endpoint:?} is not a URL: {source}")]
    NotAUrl {
        endpoint: String,
        #[source]
        source: axum::http::uri::InvalidUri,
    },
    #[error("{0:?} must be an http:// or https:// URL with a host")]
    NotHttp(String),
}

/// The URL spans are posted to: `/v1/traces` under the collector's base URL.
fn traces_url(endpoint: &str) -> Result<String, EndpointError> {
    let uri: Uri =
        endpoint.parse().map_err(|source| EndpointError::NotAUrl { endpoint: endpoint.to_string(), source })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(EndpointError::NotHttp(endpoint.to_string()));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot set up the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot set up TLS for the OTLP exporter: {0}")]
    Tls(#[source] std::io::Error),
}

/// What sends the spans: hold it while the process runs. Dropping it sends the
/// spans still batched, waiting at most `trace.timeout`.
#[derive(Default)]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Sends every span ended so far, now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "could not send the last spans");
            }
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "could not send the last spans");
            }
        }
    }
}

/// The layer that turns [`TARGET`] spans into OpenTelemetry spans, and what sends
/// them; `None` when tracing is off. Export requests run on `runtime`, which must
/// outlive the returned [`Traces`].
pub fn layer<S>(
    config: &TraceConfig,
    runtime: &tokio::runtime::Handle,
) -> Result<(Option<impl Layer<S>>, Traces), TraceError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(endpoint) = &config.otlp_endpoint else { return Ok((None, Traces::default())) };
    let url = traces_url(endpoint).expect("validated with the config");
    let client = OnRuntime::new(config.timeout, runtime.clone())?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(config.timeout)
        .build()?;
    let batches = BatchConfigBuilder::default().with_scheduled_delay(config.export_interval).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(Resource::builder_empty().with_service_name(config.service_name.clone()).build())
        .build();
    let tracer = provider.tracer("tidegate");
    // Lean spans: no busy/idle times (two clock reads per poll of an instrumented
    // future) and no OpenTelemetry context made current on every poll, which
    // nothing here reads; the span tree comes from the tracing spans themselves.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_level(false)
        .with_filter(Targets::new().with_target(TARGET, Level::TRACE));
    Ok((Some(layer), Traces { provider: Some(provider) }))
}

/// The directive that keeps [`TARGET`]'s spans out of the log.
pub fn hidden_from_log() -> tracing_subscriber::filter::Directive {
    format!("{TARGET}=off").parse().expect("a valid directive")
}

/// Makes `span` the child of the caller's span, when `headers` carry a W3C
/// `traceparent`. Call before the span is first entered.
pub fn follow(span: &Span, headers: &HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "traceparent not applied");
    }
}

/// The id of the trace the current span records into (32 hex digits, as in
/// `traceparent`), when tracing is on and the trace is sampled.
pub fn sampled_trace_id() -> Option<String> {
    let span = Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let context = cx.span().span_context().clone();
    (context.is_valid() && context.is_sampled()).then(|| context.trace_id().to_string())
}

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// The exporter's HTTP client: hyper with rustls, run on the gateway's runtime. The
/// batch processor exports from a thread of its own, outside any runtime, so each
/// request is spawned onto `runtime` and awaited from there.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient<Https>,
    runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    fn new(timeout: Duration, runtime: tokio::runtime::Handle) -> Result<Self, TraceError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
            .map_err(TraceError::Tls)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(OnRuntime { client: HyperClient::new(connector, timeout, None), runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime.spawn(async move { client.send_bytes(request).await }).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_go_to_v1_traces_under_the_endpoint() {
        assert_eq!(traces_url("http://collector:4318").unwrap(), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("https://c.example/otlp/").unwrap(), "https://c.example/otlp/v1/traces");
        assert!(traces_url("collector:4318").is_err());
        assert!(traces_url("ftp://collector").is_err());
    }

    #[tokio::test]
    async fn tracing_off_installs_no_layer() {
        let (layer, _traces) =
            layer::<tracing_subscriber::Registry>(&TraceConfig::default(), &tokio::runtime::Handle::current()).unwrap();
        assert!(layer.is_none());
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused() {
        let config = TraceConfig { sample_ratio: 1.5, ..Default::default() };
        assert!(matches!(config.validate(), Err(ConfigError::Invalid { key: "trace.sample_ratio", .. })));
        assert!(TraceConfig::default().validate().is_ok());
    }
}
