//! Debian's Prometheus 2.42: scrapes the test's gauge target every second, evaluates
//! one alerting rule every second and sends to the test's Alertmanager.
//!
//! Prometheus sends a newly firing alert at once, then re-sends every firing alert
//! every `--rules.alert.resend-delay` (1 s here) with `endsAt` 4 × max(resend delay,
//! evaluation interval) ahead, and a resolved one (with `endsAt` = the resolution)
//! for 15 minutes (rules/alerting.go `sendAlerts`, `resolvedRetention`). Batches hold
//! at most 64 alerts (notifier/notifier.go `maxBatchSize`).

use std::ffi::OsString;

use super::{family_sum, HttpProcess};

pub const BINARY: &str = "/usr/bin/prometheus";

/// The alert the rule fires, and the gauge it fires on.
pub const ALERT: &str = "KubePodCrashLooping";
pub const GAUGE: &str = "tidegate_test_crashloop";

/// kube-prometheus-stack's `Watchdog` rule (its `general.rules` group), as a rule
/// item for [`Prometheus::start_with_rules`]: always firing, a heartbeat.
pub const WATCHDOG_RULE: &str = "\
\x20     - alert: Watchdog
\x20       expr: vector(1)
\x20       labels:
\x20         severity: none
\x20       annotations:
\x20         summary: An alert that should always be firing to certify that Alertmanager is working properly.
";

pub struct Prometheus {
    pub process: HttpProcess,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) and alerting `alertmanager`
    /// (`host:port`): an Alertmanager, or the gateway itself, since both take
    /// `POST /api/v2/alerts`.
    pub async fn start(target: &str, alertmanager: &str) -> Prometheus {
        Prometheus::start_with_rules(target, alertmanager, "").await
    }

    /// [`Prometheus::start`], with `more_rules` (YAML rule items, each line indented
    /// as a rule of the group: six spaces) evaluated beside the test's own, such as
    /// [`WATCHDOG_RULE`].
    pub async fn start_with_rules(target: &str, alertmanager: &str, more_rules: &str) -> Prometheus {
        let config = format!(
            "global:\n\
             \x20 scrape_interval: 1s\n\
             \x20 evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             alerting:\n\
             \x20 alertmanagers:\n\
             \x20   - api_version: v2\n\
             \x20     static_configs:\n\
             \x20       - targets: ['{alertmanager}']\n\
             scrape_configs:\n\
             \x20 - job_name: tidegate-test\n\
             \x20   static_configs:\n\
             \x20     - targets: ['{target}']\n"
        );
        let rules = format!(
            "groups:\n\
             \x20 - name: tidegate-test\n\
             \x20   rules:\n\
             \x20     - alert: {ALERT}\n\
             \x20       expr: {GAUGE} > 0\n\
             \x20       for: 0s\n\
             \x20       labels:\n\
             \x20         severity: critical\n\
             \x20       annotations:\n\
             \x20         summary: '{{{{ $labels.pod }}}} in {{{{ $labels.namespace }}}} is crash looping'\n\
             {more_rules}"
        );
        let args = |port: u16, dir: &std::path::Path| -> Vec<OsString> {
            vec![
                format!("--config.file={}", dir.join("prometheus.yml").display()).into(),
                format!("--storage.tsdb.path={}", dir.join("data").display()).into(),
                format!("--web.listen-address=127.0.0.1:{port}").into(),
                "--rules.alert.resend-delay=1s".into(),
            ]
        };
        let files = [("prometheus.yml", config), ("rules.yml", rules)];
        let process = HttpProcess::start("prometheus", BINARY, &files, args).await;
        Prometheus { process }
    }

    /// `prometheus_notifications_sent_total`: alerts sent to Alertmanager so far.
    pub async fn alerts_sent(&self) -> f64 {
        self.notifications().await.sent
    }

    /// The notifier's own counters, read from one scrape.
    pub async fn notifications(&self) -> Notifications {
        let metrics = self.process.metrics().await;
        let sum = |name| family_sum(&metrics, name);
        Notifications {
            sent: sum("prometheus_notifications_sent_total"),
            errors: sum("prometheus_notifications_errors_total"),
            dropped: sum("prometheus_notifications_dropped_total"),
        }
    }
}

/// Prometheus 2.42's notifier counters (notifier/notifier.go, `sendAll`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Notifications {
    /// `prometheus_notifications_sent_total`: alerts in every request made, answered
    /// 2xx or not.
    pub sent: f64,
    /// `prometheus_notifications_errors_total`: requests that failed (non-2xx, or no
    /// answer); never retried.
    pub errors: f64,
    /// `prometheus_notifications_dropped_total`: alerts of batches no Alertmanager
    /// took: none was discovered yet, or every request failed (so a failure counts
    /// here and in `errors`); also alerts a full queue pushed out.
    pub dropped: f64,
}
