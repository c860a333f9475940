//! CloudEvents as the reference SDK (`cloudevents-sdk`) writes them, posted to the
//! gateway in each content mode of the HTTP binding: structured (the SDK's JSON
//! event format), batch (a JSON array of them) and binary (the SDK's own HTTP
//! binding serializer writing the `ce-*` headers). The gateway's binding is its
//! own (why: src/ingest/cloudevents/mod.rs); these hold it to the SDK.

mod support;

use axum::http::HeaderValue;
use cloudevents::binding::http::{Builder, Serializer};
use cloudevents::message::BinaryDeserializer;
use cloudevents::{AttributesWriter, Event, EventBuilder, EventBuilderV10};
use serde_json::{json, Value};
use support::{start, Gateway};

const ROUTE: &str = "/api/v1/signals/cloudevents";

/// A Falco event as Falcosidekick sends it, built by the SDK: the rule, priority
/// and output fields as data, the priority also as an extension.
fn falco(id: &str, pod: &str) -> Event {
    let data = json!({
        "rule": "Terminal shell in container",
        "priority": "Warning",
        "output": format!("A shell was spawned in {pod}"),
        "output_fields": {"k8s.ns.name": "shop", "k8s.pod.name": pod, "container.id": "9656db3bb358"},
        "source": "syscall",
        "hostname": "node-1",
    });
    EventBuilderV10::new()
        .id(id)
        .source("https://falco.org")
        .ty("falco.rule.output.v1")
        .extension("priority", "Warning")
        .data("application/json", data)
        .build()
        .expect("a valid event")
}

/// The SDK's binary-mode request: its headers and body.
#[derive(Default)]
struct Binary {
    headers: Vec<(String, HeaderValue)>,
}

impl Builder<(Vec<(String, HeaderValue)>, Vec<u8>)> for Binary {
    fn header(&mut self, key: &str, value: HeaderValue) {
        self.headers.push((key.to_string(), value));
    }

    fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<(Vec<(String, HeaderValue)>, Vec<u8>)> {
        Ok((std::mem::take(&mut self.headers), bytes))
    }

    fn finish(&mut self) -> cloudevents::message::Result<(Vec<(String, HeaderValue)>, Vec<u8>)> {
        self.body(Vec::new())
    }
}

async fn post_binary(gw: &Gateway, event: Event) -> reqwest::Response {
    let (headers, body) = event.deserialize_binary(Serializer::new(Binary::default())).expect("the SDK's binary mode");
    let mut request = gw.client.post(format!("{}{ROUTE}", gw.url)).body(body);
    for (name, value) in headers {
        request = request.header(name, value.as_bytes());
    }
    request.send().await.unwrap()
}

async fn post_structured(gw: &Gateway, event: &Event) -> reqwest::Response {
    let body = serde_json::to_vec(event).expect("the SDK's JSON event format");
    gw.post_raw(ROUTE, Some("application/cloudevents+json"), body).await
}

#[tokio::test]
async fn an_sdk_event_in_structured_mode_becomes_a_request_about_its_pod() {
    let mut gw = start().await;

    let response = post_structured(&gw, &falco("e-1", "web-0")).await;

    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    gw.stop().await;
    let rr = gw.read("shop", body["name"].as_str().unwrap());
    assert_eq!(rr.spec.signal_name, "Terminal shell in container");
    assert_eq!((rr.spec.target_resource.kind.as_str(), rr.spec.target_resource.name.as_str()), ("Pod", "web-0"));
    assert_eq!((rr.spec.severity.as_str(), rr.spec.signal_source.as_str()), ("warning", "https://falco.org"));
    assert_eq!(rr.spec.signal_annotations["cloudevents.io/id"], "e-1");
}

#[tokio::test]
async fn an_sdk_event_in_binary_mode_is_the_same_incident_as_in_structured_mode() {
    let gw = start().await;

    let binary = post_binary(&gw, falco("e-1", "web-0")).await;
    let structured = post_structured(&gw, &falco("e-2", "web-0")).await;

    assert_eq!(binary.status(), 201, "{:?}", binary.text().await);
    let (binary, structured): (Value, Value) = (binary.json().await.unwrap(), structured.json().await.unwrap());
    assert_eq!(structured["status"], "duplicate", "{structured}");
    assert_eq!(binary["fingerprint"], structured["fingerprint"]);
    assert_eq!(gw.manifests().len(), 1);
}

#[tokio::test]
async fn a_batch_of_sdk_events_is_answered_event_by_event() {
    let gw = start().await;
    let mut wrong_type = falco("e-3", "web-2");
    wrong_type.set_type("com.example.unmapped");
    let batch = serde_json::to_vec(&vec![falco("e-1", "web-0"), falco("e-2", "web-1"), wrong_type]).unwrap();

    let response = gw.post_raw(ROUTE, Some("application/cloudevents-batch+json"), batch).await;

    assert_eq!(response.status(), 207);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["summary"],
        json!({"created": 2, "duplicate": 0, "aggregated": 0, "resolved": 0, "heartbeat": 0, "held": 0, "outOfScope": 0, "silenced": 0, "inhibited": 0, "failed": 1})
    );
    assert_eq!(body["results"][2]["error"]["detail"].as_str().unwrap().split(':').next(), Some("$[2].type"));
    assert_eq!(gw.manifests().len(), 2);
}
