//! `deploy/monitoring/`: the alerts on tidegate, their unit tests and runbook, and the
//! dashboard, checked with Debian's `promtool` and against the metrics a running
//! gateway really exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::kube::Kube;
use support::{alert, eventually, start_kube, webhook};

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring")
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(monitoring().join(file)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Runs `promtool` with `args` in `deploy/monitoring`, failing with its output.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).current_dir(monitoring()).output().unwrap_or_else(|e| {
        panic!("promtool {args:?}: {e} (Debian: apt-get install prometheus; scripts/test installs it)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
}

fn rules() -> Vec<Value> {
    yaml("tidegate.rules.yaml")["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

/// Every PromQL expression of the dashboard, with Grafana's interval variable given
/// the value it stands for.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let at = format!("panel {:?} target {}", panel["title"], target["refId"]);
            out.push((at, target["expr"].as_str().unwrap().replace("$__rate_interval", "5m")));
        }
    }
    out
}

/// The dashboard's panels as a Markdown table: what docs/dashboard.md shows, in
/// place of a screenshot.
fn dashboard_table() -> String {
    let text = std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = String::from(
        "# The tidegate dashboard\n\n\
         `deploy/monitoring/dashboard.json`, panel by panel. Generated from the JSON by\n\
         `scripts/dashboard-doc`; `tests/monitoring.rs` fails when the two differ.\n\n\
         | # | Panel | Unit | Queries |\n|---|---|---|---|\n",
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        let queries: Vec<String> = panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| format!("`{}`", t["expr"].as_str().unwrap().replace('|', "\\|")))
            .collect();
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
        out.push_str(&format!(
            "| {} | {} | {unit} | {} |\n",
            panel["id"],
            panel["title"].as_str().unwrap(),
            queries.join("<br>")
        ));
    }
    out
}

/// `TIDEGATE_BLESS=1` (what `scripts/dashboard-doc` sets) writes the table instead.
#[test]
fn docs_dashboard_md_lists_every_panel() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.md");
    if std::env::var_os("TIDEGATE_BLESS").is_some() {
        std::fs::write(&path, dashboard_table()).unwrap();
    }
    let documented = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(documented == dashboard_table(), "docs/dashboard.md is stale: run scripts/dashboard-doc");
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    promtool(&["check", "rules", "tidegate.rules.yaml"]);
    promtool(&["test", "rules", "tidegate.rules.test.yaml"]);
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section() {
    let runbook = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbook.md")).unwrap();
    let sections: BTreeSet<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_ascii_lowercase()).collect();
    let tests = std::fs::read_to_string(monitoring().join("tidegate.rules.test.yaml")).unwrap();
    for rule in rules() {
        let name = rule["alert"].as_str().expect("only alerts in this file");
        assert!(matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning")), "{name}: severity");
        assert!(rule["annotations"]["summary"].as_str().is_some_and(|s| !s.is_empty()), "{name}: summary");
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_else(|| panic!("{name}: runbook_url"));
        let anchor = url.split_once("docs/runbook.md#").unwrap_or_else(|| panic!("{name}: {url}")).1;
        assert_eq!(anchor, name.to_ascii_lowercase(), "{name}: the anchor names the alert");
        assert!(sections.contains(anchor), "{name}: docs/runbook.md has no `## {name}` section");
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name}: no unit test in tidegate.rules.test.yaml");
    }
}

#[test]
fn the_prometheus_rule_manifest_carries_the_same_groups() {
    let manifest = yaml("prometheusrule.yaml");
    assert_eq!(manifest["kind"], "PrometheusRule");
    assert_eq!(manifest["spec"]["groups"], yaml("tidegate.rules.yaml")["groups"]);
}

#[test]
fn every_dashboard_expression_parses() {
    // promtool parses expressions only in rule files: one recording rule each.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (at, expr)) in dashboard_expressions().iter().enumerate() {
        file.push_str(&format!(
            "      # {at}\n      - record: dashboard:expression_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&path, file).unwrap();
    promtool(&["check", "rules", path.to_str().unwrap()]);
}

/// The metric names an expression reads.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tidegate_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

/// A gateway on the real API server, driven until every family it has has a
/// sample (prometheus-client leaves a family out until it has one): new incidents,
/// a storm, repeats, a refusal, a full store and a rate-limited source.
async fn exposition_of_a_busy_gateway() -> String {
    let kube = Kube::new().await;
    let ns = kube.namespace("metrics", &[]).await;
    let mut gw = start_kube(&kube, |c| {
        c.memory.max_entries = 30;
        c.rate_limit.rate = 0.01;
        c.rate_limit.burst = 12;
        c.status_writer.interval = std::time::Duration::from_millis(10);
        c.heartbeat.expect = [("unauthenticated".to_string(), std::time::Duration::from_secs(60))].into();
    })
    .await;
    // A heartbeat, for the last-seen gauges.
    assert_eq!(gw.alerts(&webhook(vec![alert("Watchdog", &ns, "")])).await.status(), 202);
    // Twelve pods of one alert: ten incidents, then a storm.
    let storm: Vec<_> = (0..12).map(|i| alert("CrashLooping", &ns, &format!("web-{i}"))).collect();
    assert_eq!(gw.alerts(&webhook(storm.clone())).await.status(), 207);
    assert_eq!(gw.alerts(&webhook(storm)).await.status(), 207);
    // Distinct alerts past `memory.max_entries`: the store is full.
    let many: Vec<_> = (0..30).map(|i| alert(&format!("Alert{i}"), &ns, "db-0")).collect();
    gw.alerts(&webhook(many)).await;
    // Refusals until the source is over its limit.
    for _ in 0..20 {
        if gw.post_raw(PROMETHEUS, Some("application/json"), b"{".to_vec()).await.status() == 503 {
            break;
        }
    }
    gw.owner_caches_listed().await;
    eventually("the status writes of the repeats", || async {
        gw.get("/metrics").await.text().await.unwrap().contains("\n# TYPE tidegate_sink_writes counter\n")
    })
    .await;
    let exposition = gw.get("/metrics").await.text().await.unwrap();
    gw.stop().await;
    exposition
}

const PROMETHEUS: &str = "/api/v1/signals/prometheus";

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_rules_read_only_metrics_the_gateway_exports() {
    let exposition = exposition_of_a_busy_gateway().await;
    let families: BTreeSet<&str> =
        exposition.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let exported = |name: &str| {
        families.contains(name)
            || ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|family| families.contains(family)))
    };
    let rules = rules().into_iter().map(|r| (format!("alert {}", r["alert"]), r["expr"].as_str().unwrap().to_string()));
    let mut read = 0;
    for (at, expr) in rules.chain(dashboard_expressions()) {
        for name in metrics_in(&expr) {
            assert!(exported(&name), "{at} reads {name}, which the gateway does not export:\n{exposition}");
            read += 1;
        }
    }
    assert!(read > 30, "only {read} metric reads found");
}

/// What an idle gateway (no request yet) exports: every series whose labels are a
/// fixed set is there at 0, so that `increase()` sees the first event after a
/// start and a panel shows 0 rather than "no data".
#[tokio::test]
async fn an_idle_gateway_exports_every_series_of_a_fixed_label_set_at_zero() {
    use tidegate::auth::AuthError;
    use tidegate::http::problem::Problem;
    use tidegate::ingest::IngestError;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "idle-token").unwrap();
    let yaml = format!("authenticators: {{t: {{bearer: {{tokens: {{alertmanager-prod: {}}}}}}}}}", token.display());
    let gw = support::start_with(|c| c.auth = serde_norway::from_str(&yaml).unwrap()).await;
    let exposition = gw.get("/metrics").await.text().await.unwrap();
    let zero = |series: String| {
        let line = format!("{series} 0");
        assert!(exposition.lines().any(|l| l == line), "no `{line}` in an idle gateway's /metrics:\n{exposition}");
    };
    let reasons = [Problem::REASONS, AuthError::REASONS, IngestError::KINDS].concat();
    for reason in reasons {
        zero(format!(r#"tidegate_http_rejections_total{{reason="{reason}"}}"#));
    }
    for signal_type in tidegate::ingest::signal_types() {
        let outcomes = ["created", "duplicate", "resolved", "aggregated", "failed"];
        let held = ["heartbeat", "backing_off", "held", "out_of_scope", "silenced", "inhibited"];
        for outcome in outcomes.into_iter().chain(held) {
            let source = signal_type.as_str();
            zero(format!(r#"tidegate_signals_received_total{{source="{source}",outcome="{outcome}"}}"#));
        }
    }
    for class in tidegate::http::SOURCE_CLASSES {
        zero(format!(r#"tidegate_rate_limited_total{{source_class="{class}"}}"#));
    }
    for storm in ["rate", "pattern"] {
        zero(format!(r#"tidegate_storms_detected_total{{type="{storm}"}}"#));
    }
    for cause in tidegate::state::StateError::CAUSES {
        zero(format!(r#"tidegate_state_errors_total{{reason="{cause}"}}"#));
    }
    for failure in tidegate::http::tls::Failure::ALL {
        zero(format!(r#"tidegate_tls_handshake_failures_total{{reason="{}"}}"#, failure.reason()));
    }
    for reason in ["failure_backoff", "manual_review"] {
        zero(format!(r#"tidegate_signals_held_back_total{{reason="{reason}"}}"#));
    }
    zero(r#"tidegate_authenticated_requests_total{sender="alertmanager-prod",method="bearer"}"#.into());
    // Silences' statuses are written by the requests' status writer, counted apart.
    for op in ["create", "update_status", "update_silence_status"] {
        for outcome in ["ok"].iter().chain(tidegate::sink::SinkError::LABELS) {
            zero(format!(r#"tidegate_sink_writes_total{{op="{op}",outcome="{outcome}"}}"#));
        }
    }
    // A gateway writing to a directory calls no Kubernetes API, and says none.
    assert!(!exposition.contains("tidegate_kube_api_calls_total{"), "kube API series without a cluster:\n{exposition}");
    // The alert on refused credentials reads these from the start.
    let rejecting = rules().into_iter().find(|r| r["alert"] == "TidegateRejectingCredentials").unwrap();
    let expr = rejecting["expr"].as_str().unwrap();
    let matcher = expr.split("reason=~\"").nth(1).and_then(|r| r.split('"').next()).unwrap();
    for reason in matcher.split('|') {
        zero(format!(r#"tidegate_http_rejections_total{{reason="{reason}"}}"#));
    }
}
