//! Senders

use super::*;

pub(crate) struct Senders {
    pub(crate) client: reqwest::Client,
    pub(crate) urls: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) incidents: Vec<Incident>,
    pub(crate) ledger: Ledger,
    /// Set when no new notification is to be started.
    pub(crate) stopping: AtomicBool,
    pub(crate) backoff_cap: Duration,
}

impl Senders {
    pub(crate) fn body(&self, picks: &[usize], serial: u64) -> Vec<u8> {
        let alerts: Vec<Value> = picks
            .iter()
            .map(|&i| {
                let incident = &self.incidents[i];
                json!({
                    "status": "firing",
                    "labels": {
                        "alertname": incident.alertname,
                        "namespace": self.namespace,
                        "deployment": incident.deployment,
                        "severity": "warning",
                    },
                    "annotations": {"summary": format!("{} on {}", incident.alertname, incident.deployment)},
                    "startsAt": "2026-11-27T10:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": format!("{i:016x}"),
                })
            })
            .collect();
        serde_json::to_vec(&json!({
            "version": "4",
            "groupKey": format!("{{}}:{{chaos=\"{serial}\"}}"),
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "tidegate",
            "groupLabels": {},
            "commonLabels": {"namespace": self.namespace},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "alerts": alerts,
        }))
        .expect("JSON")
    }
}

/// Alertmanager's backoff (`cenkalti/backoff` defaults): 0.5 s, ×1.5, ±50 %, capped.
pub(crate) struct Backoff {
    pub(crate) next: f64,
    pub(crate) cap: f64,
}

impl Backoff {
    pub(crate) fn delay(&mut self, rng: &mut Rng) -> Duration {
        let current = self.next;
        self.next = (self.next * 1.5).min(self.cap);
        Duration::from_secs_f64(rng.between(current * 0.5, current * 1.5))
    }
}

pub(crate) async fn sender(senders: Arc<Senders>, id: usize, mut rng: Rng) {
    let tally = &senders.ledger.tally;
    let mut replica = id % senders.urls.len();
    let mut serial = 0;
    while !senders.stopping.load(Ordering::Relaxed) {
        let n = 1 + rng.below(4) as usize;
        let mut picks: Vec<usize> = Vec::with_capacity(n);
        while picks.len() < n.min(senders.incidents.len()) {
            let i = rng.below(senders.incidents.len() as u64) as usize;
            if !picks.contains(&i) {
                picks.push(i);
            }
        }
        serial += 1;
        let body = senders.body(&picks, ((id as u64) << 32) | serial);
        add(&tally.notifications, 1);
        let mut backoff = Backoff { next: 0.5, cap: senders.backoff_cap.as_secs_f64() };
        let mut first = true;
        loop {
            add(&tally.attempts, 1);
            if !first {
                add(&tally.retries, 1);
            }
            first = false;
            let sent_at = Instant::now();
            let sent = senders
                .client
                .post(format!("{}/api/v1/signals/prometheus", senders.urls[replica]))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await;
                    text.map(|t| (status, t))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((status, text)) if (200..300).contains(&status) => {
                    acknowledge(&senders, &picks, (sent_at, replica), status, &text);
                    break;
                }
                Ok((status, text)) if (400..500).contains(&status) => {
                    // Final, as for Alertmanager: these alerts are dropped for good.
                    add(&tally.answered_4xx, 1);
                    add(&tally.alerts_rejected, picks.len() as u64);
                    senders.ledger.note(format!("{status} for a valid body: {}", process::tail(&text, 300)));
                    break;
                }
                Ok(_) => {
                    add(&tally.answered_5xx, 1);
                }
                Err(_) => {
                    add(&tally.transport_errors, 1);
                    replica = (replica + 1) % senders.urls.len();
                }
            }
            for &i in &picks {
                senders.ledger.book(i).unacked += 1;
            }
            tokio::time::sleep(backoff.delay(&mut rng)).await;
        }
        // Alertmanager sends a group at most once per group_interval; many groups
        // make the load. A short pause keeps two cores for the servers.
        tokio::time::sleep(Duration::from_millis(20 + rng.below(60))).await;
    }
}

/// Records a 2xx answer in the ledger: every alert of the body is acknowledged.
/// `to` is when the attempt was sent, and to which replica.
pub(crate) fn acknowledge(senders: &Senders, picks: &[usize], to: (Instant, usize), status: u16, text: &str) {
    let (sent, replica) = to;
    let answered = Instant::now();
    let tally = &senders.ledger.tally;
    let parsed: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let results: Vec<Value> = match parsed.get("results") {
        Some(Value::Array(results)) => results.clone(),
        _ => vec![parsed.clone()],
    };
    if results.len() != picks.len() {
        add(&tally.odd_results, 1);
        senders.ledger.note(format!("{status} with {} results for {} alerts: {text}", results.len(), picks.len()));
    }
    for (k, &i) in picks.iter().enumerate() {
        let result = results.get(k).cloned().unwrap_or(Value::Null);
        let outcome = result["status"].as_str().unwrap_or("");
        if !matches!(outcome, "created" | "duplicate") {
            add(&tally.odd_results, 1);
            senders.ledger.note(format!("{status}, alert {k} answered {result}"));
        }
        let mut book = senders.ledger.book(i);
        book.acked.push(Ack { sent, answered, replica });
        if let Some(name) = result["name"].as_str() {
            *book.names.entry(name.to_string()).or_default() += 1;
        }
    }
    add(&tally.alerts_acked, picks.len() as u64);
}
