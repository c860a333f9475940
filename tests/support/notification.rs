//! Realistic Alertmanager notifications, for sizing and for storms.
//!
//! `KubePodCrashLooping` as kube-prometheus-stack ships it: the rule's own labels and
//! annotations, the labels kube-state-metrics' series carry once Prometheus has
//! scraped them through the ServiceMonitor, the external labels the operator adds,
//! and the generator URL with the rule's expression, URL-encoded. Used by the tests
//! that prove the default body limit and by `cargo bench --bench ingest`.

use serde_json::{json, Value};

/// The rule's expression, as Prometheus URL-encodes it into `generatorURL`.
const GENERATOR_URL: &str = "http://kube-prometheus-stack-prometheus.monitoring:9090/graph?g0.expr=max_over_time%28kube_pod_container_status_waiting_reason%7Bjob%3D%22kube-state-metrics%22%2Cnamespace%3D~%22.%2A%22%2Creason%3D%22CrashLoopBackOff%22%7D%5B5m%5D%29+%3E%3D+1&g0.tab=1";

/// A deterministic pseudo-UUID: real pod uids are random, and so is their size.
fn uid(i: u64) -> String {
    let a = splitmix64(i);
    let b = splitmix64(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// A bijective 64-bit mixer (SplitMix64's finaliser).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `i`th crash-looping pod of `namespace`, as one alert of a webhook notification.
pub fn crash_looping_alert(namespace: &str, i: usize) -> Value {
    let pod = format!("checkout-api-7d9f8c6b5d-{:05x}", splitmix64(i as u64) & 0xfffff);
    let container = "checkout-api";
    json!({
        "status": "firing",
        "labels": {
            "alertname": "KubePodCrashLooping",
            "cluster": "prod-eu-west-1",
            "container": container,
            "endpoint": "http",
            "instance": "10.42.3.17:8080",
            "job": "kube-state-metrics",
            "namespace": namespace,
            "pod": pod,
            "prometheus": "monitoring/kube-prometheus-stack-prometheus",
            "reason": "CrashLoopBackOff",
            "service": "kube-prometheus-stack-kube-state-metrics",
            "severity": "warning",
            "uid": uid(i as u64),
        },
        "annotations": {
            "description": format!(
                "Pod {namespace}/{pod} ({container}) is in waiting state (reason: \"CrashLoopBackOff\")."
            ),
            "runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping",
            "summary": "Pod is crash looping.",
        },
        "startsAt": "2026-11-25T10:00:00.123456789Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": GENERATOR_URL,
        "fingerprint": format!("{:016x}", splitmix64(!(i as u64))),
    })
}

/// One Alertmanager webhook notification (v4) of `alerts` crash-looping pods of one
/// namespace: what Alertmanager sends for a group by `(alertname, namespace)`.
pub fn crash_looping(namespace: &str, alerts: usize) -> Value {
    let group = json!({"alertname": "KubePodCrashLooping", "namespace": namespace});
    json!({
        "receiver": "tidegate",
        "status": "firing",
        "alerts": (0..alerts).map(|i| crash_looping_alert(namespace, i)).collect::<Vec<_>>(),
        "groupLabels": group,
        "commonLabels": {
            "alertname": "KubePodCrashLooping",
            "cluster": "prod-eu-west-1",
            "endpoint": "http",
            "job": "kube-state-metrics",
            "namespace": namespace,
            "prometheus": "monitoring/kube-prometheus-stack-prometheus",
            "reason": "CrashLoopBackOff",
            "service": "kube-prometheus-stack-kube-state-metrics",
            "severity": "warning",
        },
        "commonAnnotations": {
            "runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/kubepodcrashlooping",
            "summary": "Pod is crash looping.",
        },
        "externalURL": "http://kube-prometheus-stack-alertmanager.monitoring:9093",
        "version": "4",
        "groupKey": format!("{{}}/{{severity=~\"warning|critical\"}}:{{alertname=\"KubePodCrashLooping\", namespace=\"{namespace}\"}}"),
        "truncatedAlerts": 0,
    })
}
