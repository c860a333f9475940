//! Traces: the spans of one webhook, as an OTLP/HTTP collector receives them.
//!
//! The collector is in this process: an axum route `POST /v1/traces` that decodes
//! each `ExportTraceServiceRequest` and keeps its spans. The test binary installs
//! the gateway's own trace layer (`telemetry::trace::layer`) as its global
//! subscriber, exporting there with every trace sampled and a short export
//! interval, so tests wait for spans by polling the collector.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::{alert, eventually, start_with, webhook, Gateway};
use tidegate::remediation::TRACE_ID_ANNOTATION;
use tidegate::telemetry::trace::{self, TraceConfig};
use tracing_subscriber::layer::SubscriberExt;

/// Every span received, with its resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// The in-process collector, and the trace configuration that exports to it.
struct Collector {
    config: TraceConfig,
    spans: Received,
}

impl Collector {
    /// The spans of the trace `trace_id` (hex).
    fn trace(&self, trace_id: &str) -> Vec<(String, Span)> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|(_, s)| hex::encode(&s.trace_id) == trace_id).cloned().collect()
    }
}

/// The collector, started once per test binary with its own runtime (it must
/// outlive every test's), and the global subscriber that exports to it.
fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<Collector> = OnceLock::new();
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let runtime = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
        });
        let spans = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/v1/traces", post(receive)).with_state(spans.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
        let config = TraceConfig {
            otlp_endpoint: Some(format!("http://{addr}")),
            sample_ratio: 1.0,
            service_name: "tidegate-under-test".into(),
            export_interval: Duration::from_millis(50),
            ..TraceConfig::default()
        };
        let (layer, traces) = trace::layer(&config, runtime.handle()).unwrap();
        // Spans are sent for as long as the test binary runs.
        std::mem::forget(traces);
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();
        Collector { config, spans }
    })
}

async fn receive(State(spans): State<Received>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
    let mut spans = spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(name) => Some(name.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            spans.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

/// A fresh W3C trace id and parent span id, hex.
fn caller_ids() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let parent = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (trace_id, parent)
}

/// Sends one new alert as a caller whose span `parent` is in the sampled trace
/// `trace_id`, and returns the answer's status.
async fn send_traced(gw: &Gateway, trace_id: &str, parent: &str) -> u16 {
    let response = gw
        .client
        .post(format!("{}/api/v1/signals/prometheus", gw.url))
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .json(&webhook(vec![alert("HighMemory", "shop", "web-0")]))
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn a_webhook_with_a_traceparent_is_one_span_tree_under_the_callers_span() {
    let collector = collector();
    let mut gw = start_with(|c| c.trace = collector.config.clone()).await;
    let (trace_id, parent) = caller_ids();

    assert_eq!(send_traced(&gw, &trace_id, &parent).await, 201);

    // The request span ends last: once it is in, the whole tree is.
    eventually("the request's span reaches the collector", || async {
        collector.trace(&trace_id).iter().any(|(_, s)| s.name == "receive")
    })
    .await;
    let spans = collector.trace(&trace_id);
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|(_, s)| (s.span_id.as_slice(), s)).collect();
    let named =
        |name: &str| {
            spans.iter().map(|(_, s)| s).find(|s| s.name == name).unwrap_or_else(|| {
                panic!("no {name} span in {:?}", spans.iter().map(|(_, s)| &s.name).collect::<Vec<_>>())
            })
        };
    let receive = named("receive");
    assert_eq!(hex::encode(&receive.parent_span_id), parent, "the request span is the caller's span's child");
    assert_eq!(receive.kind, SpanKind::Server as i32);
    assert_eq!(attribute(receive, "http.route"), Some(&AnyValue::StringValue("/api/v1/signals/prometheus".into())));
    assert_eq!(attribute(receive, "http.response.status_code"), Some(&AnyValue::IntValue(201)));
    for name in ["parse", "decide", "create"] {
        let mut at = named(name);
        while at.span_id != receive.span_id {
            at = by_id.get(at.parent_span_id.as_slice()).unwrap_or_else(|| panic!("{name} is not under receive"));
        }
    }
    assert_eq!(attribute(named("decide"), "state.op"), Some(&AnyValue::StringValue("admit_and_observe".into())));
    assert!(spans.iter().all(|(service, _)| service == "tidegate-under-test"));

    gw.stop().await;
    let rr = gw.only_request();
    assert_eq!(rr.metadata.annotations.unwrap().get(TRACE_ID_ANNOTATION), Some(&trace_id));
}

#[tokio::test]
async fn with_tracing_off_a_created_request_names_no_trace() {
    // Spans are recorded in this process, but this gateway's tracing is off.
    collector();
    let mut gw = start_with(|c| c.trace = TraceConfig::default()).await;
    let (trace_id, parent) = caller_ids();

    assert_eq!(send_traced(&gw, &trace_id, &parent).await, 201);

    gw.stop().await;
    let rr = gw.only_request();
    assert_eq!(rr.metadata.annotations.unwrap().get(TRACE_ID_ANNOTATION), None);
}
