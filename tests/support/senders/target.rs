//! The scrape target: a small HTTP server in the test serving one gauge family,
//! `tidegate_test_crashloop{namespace,pod}`, whose series the test sets and clears.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::routing::get;

use super::prometheus::GAUGE;

type Series = Arc<Mutex<BTreeMap<(String, String), f64>>>;

/// Serves `GET /metrics` on `127.0.0.1:<free port>` until the test's runtime ends.
pub struct GaugeTarget {
    addr: SocketAddr,
    series: Series,
}

impl GaugeTarget {
    pub async fn start() -> GaugeTarget {
        let series = Series::default();
        let served = series.clone();
        let app = axum::Router::new().route("/metrics", get(move || async move { exposition(&served) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        GaugeTarget { addr, series }
    }

    /// `host:port`, as Prometheus' `static_configs` spell a target.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Sets the series of `pods` in `namespace` to `value`: 1 fires the alert for
    /// each, 0 resolves it.
    pub fn set<'a>(&self, namespace: &str, pods: impl IntoIterator<Item = &'a str>, value: f64) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        for pod in pods {
            series.insert((namespace.to_owned(), pod.to_owned()), value);
        }
    }
}

/// The Prometheus text exposition of every series.
fn exposition(series: &Series) -> String {
    let series = series.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = format!("# HELP {GAUGE} Set by the test.\n# TYPE {GAUGE} gauge\n");
    for ((namespace, pod), value) in series.iter() {
        let _ = writeln!(out, "{GAUGE}{{namespace=\"{namespace}\",pod=\"{pod}\"}} {value}");
    }
    out
}
