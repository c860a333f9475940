//! Debian's Alertmanager 0.25, with one receiver: the gateway, through its webhook
//! integration or its PagerDuty integration (`pagerduty_configs` with `url:`).
//!
//! Timing, as Alertmanager 0.25 behaves (dispatch/dispatch.go, notify/notify.go,
//! cmd/alertmanager/main.go):
//! * a group's first notification goes out `group_wait` after its first alert, then
//!   the group is flushed every `group_interval`; a flush notifies only when the set
//!   of firing (or, with `send_resolved`, resolved) alerts changed since the last
//!   successful notification, or `repeat_interval` has passed since it (DedupStage
//!   reads the notification log, which only a success writes);
//! * each flush runs under a deadline of max(`group_interval`, `notify.MinTimeout` =
//!   10 s): with 1 s intervals, 10 s. Within it the RetryStage retries every failed
//!   attempt that may succeed (webhook: 5xx and transport errors; 4xx are final) with
//!   exponential backoff (0.5 s initial, ×1.5, ±50% jitter; `Retry-After` is not
//!   read). The group's timer is reset before the flush, so after a flush that used up
//!   its deadline the next one starts at once, and since a failure wrote nothing to the
//!   notification log, it sends the group again;
//! * counters: `alertmanager_notifications_total` counts flushes that reached the
//!   RetryStage (incremented when they start), `alertmanager_notifications_failed_total`
//!   those that gave up (deadline or a 4xx), `alertmanager_notification_requests_total`
//!   and `..._failed_total` every HTTP attempt, counted when it has been answered.

use std::ffi::OsString;
use std::time::Duration;

use super::{sample, HttpProcess};

pub const BINARY: &str = "/usr/bin/prometheus-alertmanager";

pub struct Alertmanager {
    pub process: HttpProcess,
    /// The integration that notifies the gateway: `webhook` or `pagerduty`, the
    /// label of its counters.
    integration: &'static str,
}

/// Alertmanager's own counters for the integration that notifies the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// `alertmanager_notifications_total`: notifications (flushes) attempted.
    pub notifications: u64,
    /// `alertmanager_notifications_failed_total`: notifications given up on.
    pub failed: u64,
    /// `alertmanager_notification_requests_total`: HTTP requests answered or failed.
    pub requests: u64,
    /// `alertmanager_notification_requests_failed_total`: requests that failed (non-2xx,
    /// or no answer).
    pub requests_failed: u64,
}

impl Counters {
    /// Requests the gateway answered 2xx.
    pub fn delivered(&self) -> u64 {
        self.requests - self.requests_failed
    }
}

impl Alertmanager {
    /// Starts Alertmanager with a route grouping by alert name and namespace (1 s
    /// group wait and interval, `repeat_interval` as given), no clustering, and one
    /// webhook receiver posting to `webhook_url` with `send_resolved: true`.
    pub async fn start(webhook_url: &str, repeat_interval: &str) -> Alertmanager {
        Alertmanager::start_with(webhook_url, repeat_interval, "").await
    }

    /// [`Alertmanager::start`], the receiver's `http_config` being `http_config`
    /// (YAML, as the keys under it: `authorization`, `basic_auth`, `tls_config`).
    pub async fn start_with(webhook_url: &str, repeat_interval: &str, http_config: &str) -> Alertmanager {
        let http_config = match http_config {
            "" => String::new(),
            yaml => format!("\x20       http_config: {yaml}\n"),
        };
        let receiver = format!(
            "\x20   webhook_configs:\n\
             \x20     - url: {webhook_url}\n\
             \x20       send_resolved: true\n\
             {http_config}"
        );
        Alertmanager::start_receiver("webhook", &receiver, repeat_interval).await
    }

    /// Starts Alertmanager as [`Alertmanager::start`] does, notifying through its
    /// PagerDuty integration (Events API v2) at `enqueue_url` with `routing_key`,
    /// `send_resolved: true`, and the group's `namespace` and `pod` in the event's
    /// details, as the README tells a user to write them.
    pub async fn start_pagerduty(enqueue_url: &str, routing_key: &str, repeat_interval: &str) -> Alertmanager {
        let receiver = format!(
            "\x20   pagerduty_configs:\n\
             \x20     - url: {enqueue_url}\n\
             \x20       routing_key: {routing_key}\n\
             \x20       send_resolved: true\n\
             \x20       details:\n\
             \x20         namespace: '{{{{ .CommonLabels.namespace }}}}'\n\
             \x20         pod: '{{{{ .CommonLabels.pod }}}}'\n"
        );
        Alertmanager::start_receiver("pagerduty", &receiver, repeat_interval).await
    }

    /// Alertmanager with the one receiver `tidegate` of `integration`, configured by
    /// `receiver` (YAML, its keys under the receiver's name).
    async fn start_receiver(integration: &'static str, receiver: &str, repeat_interval: &str) -> Alertmanager {
        let config = format!(
            "route:\n\
             \x20 receiver: tidegate\n\
             \x20 group_by: [alertname, namespace]\n\
             \x20 group_wait: 1s\n\
             \x20 group_interval: 1s\n\
             \x20 repeat_interval: {repeat_interval}\n\
             receivers:\n\
             \x20 - name: tidegate\n\
             {receiver}"
        );
        let args = |port: u16, dir: &std::path::Path| -> Vec<OsString> {
            vec![
                format!("--config.file={}", dir.join("alertmanager.yml").display()).into(),
                format!("--storage.path={}", dir.join("data").display()).into(),
                format!("--web.listen-address=127.0.0.1:{port}").into(),
                // Empty: no gossip, so no cluster wait before notifying either.
                "--cluster.listen-address=".into(),
                "--log.level=debug".into(),
            ]
        };
        let process = HttpProcess::start("alertmanager", BINARY, &[("alertmanager.yml", config)], args).await;
        Alertmanager { process, integration }
    }

    /// The counters of the integration that notifies the gateway.
    pub async fn counters(&self) -> Counters {
        let text = self.process.metrics().await;
        let series = |name: &str| sample(&text, &format!("{name}{{integration=\"{}\"}}", self.integration)) as u64;
        Counters {
            notifications: series("alertmanager_notifications_total"),
            failed: series("alertmanager_notifications_failed_total"),
            requests: series("alertmanager_notification_requests_total"),
            requests_failed: series("alertmanager_notification_requests_failed_total"),
        }
    }

    /// The counters once they hold still: two reads 100 ms apart that agree, so that
    /// no attempt is between being counted and being counted as failed.
    pub async fn settled_counters(&self) -> Counters {
        let mut last = self.counters().await;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.counters().await;
            if now == last {
                return now;
            }
            last = now;
        }
    }
}
