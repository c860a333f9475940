//! Audit events, read from the log of a real `tidegate serve --log-format json`:
//! one per request created and per storm opened, refusals (for credentials, for
//! rate, of client certificates) summed per sender and reason with their count, each
//! with the fields the README's schema gives (which is checked against
//! `tidegate::audit::SCHEMA`), and no credential in the log; and one per silence
//! created, expired, or first matched by an incident, never one per alert.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::process::{kill, pick_port, poll_until, spawn};
use support::{alert, eventually_within, webhook};
use tidegate::audit;

const TOKEN: &str = "audit-token-7f3a";

/// Every JSON line the gateway wrote, as it writes them.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Value>>>);

impl Log {
    fn audit(&self, event: &str) -> Vec<Value> {
        let lines = self.0.lock().unwrap();
        lines.iter().filter(|l| l["target"] == audit::TARGET && l["fields"]["event"] == event).cloned().collect()
    }

    /// The `event`s of `actor` (and `reason`, if given), and the refusals they
    /// stand for.
    fn refusals(&self, event: &str, actor: &str, reason: Option<&str>) -> (usize, u64) {
        let events: Vec<Value> = self
            .audit(event)
            .into_iter()
            .filter(|e| e["fields"]["actor"] == actor && reason.is_none_or(|r| e["fields"]["reason"] == r))
            .collect();
        (events.len(), events.iter().map(|e| e["fields"]["count"].as_u64().unwrap()).sum())
    }
}

/// A `tidegate serve --log-format json` on a port of its own with `args` and `env`,
/// its JSON lines gathered in a [`Log`] as it writes them.
fn serve(dir: &std::path::Path, args: &[&str], env: &[(&str, String)]) -> (std::process::Child, Log, u16) {
    let port = pick_port(None);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidegate"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--log-format", "json"])
        .args(args)
        .arg("--sink")
        .arg(format!("dir:{}", dir.join("sink").display()))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(cmd).expect("spawn tidegate");
    let log = Log::default();
    let stdout = child.stdout.take().unwrap();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            lines.0.lock().unwrap().push(value);
        }
    });
    (child, log, port)
}

/// [`serve`] with the bearer token [`TOKEN`] of source `alertmanager`, a rate limit
/// of `burst` then 0.01 a second, and `args`; once it is ready.
async fn serve_with_token(
    dir: &std::path::Path,
    burst: u32,
    args: &[&str],
) -> (std::process::Child, Log, String, reqwest::Client) {
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let auth =
        format!("{{authenticators: {{am: {{bearer: {{tokens: {{alertmanager: {}}}}}}}}}}}", token_file.display());
    let env = [
        ("TIDEGATE_AUTH", auth),
        ("TIDEGATE_RATE_LIMIT_RATE", "0.01".to_string()),
        ("TIDEGATE_RATE_LIMIT_BURST", burst.to_string()),
    ];
    let (child, log, port) = serve(dir, args, &env);
    let (url, client) = (format!("http://127.0.0.1:{port}"), reqwest::Client::new());
    ready(&client, &url).await;
    (child, log, url, client)
}

async fn ready(client: &reqwest::Client, url: &str) {
    eventually_within("tidegate to be ready", Duration::from_secs(20), || {
        let (client, ready) = (client.clone(), format!("{url}/readyz"));
        async move { client.get(&ready).send().await.is_ok_and(|r| r.status() == 200) }
    })
    .await;
}

/// Long enough for the refusals summed in a window to be written: the interval, the
/// writer's period, and slack for a busy machine.
const SUMMED: Duration = Duration::from_secs(40);

#[tokio::test]
async fn each_created_request_storm_and_refusal_is_one_audit_event_with_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    // A filter that would drop info events: audit events are kept anyway.
    let (child, log, url, client) = serve_with_token(dir.path(), 3, &["--log", "warn"]).await;
    let post = |token: &str, alerts: Vec<Value>| {
        client
            .post(format!("{url}/api/v1/signals/prometheus"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&webhook(alerts)).unwrap())
            .send()
    };

    // One alert name on twelve pods of a namespace: five requests, then a pattern
    // storm (207: the alerts had different outcomes).
    let storm: Vec<Value> = (0..12).map(|i| alert("DiskFull", "payments", &format!("db-{i}"))).collect();
    let first = post(TOKEN, storm).await.unwrap();
    let status = first.status();
    assert!(status.is_success(), "{}", first.text().await.unwrap());
    assert_eq!(post("not-the-token", vec![alert("X", "payments", "x-0")]).await.unwrap().status(), 401);
    // Burst 3 at 0.01/s: the sender's third request after the first is refused.
    let statuses = [post(TOKEN, vec![]).await.unwrap().status(), post(TOKEN, vec![]).await.unwrap().status()];
    let limited = post(TOKEN, vec![alert("Y", "payments", "y-0")]).await.unwrap();
    assert_eq!(limited.status(), 503, "after {statuses:?}");

    let events = poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let events: Vec<_> = [audit::REQUEST_CREATED, audit::STORM_OPENED, audit::AUTH_REFUSED, audit::RATE_LIMITED]
            .iter()
            .map(|e| log.audit(e))
            .collect();
        events.iter().all(|e| !e.is_empty()).then_some(events)
    })
    .unwrap_or_else(|| panic!("not every kind of audit event was written: {:?}", log.0.lock().unwrap()));
    let [created, storms, refused, rate_limited] = &events[..] else { unreachable!() };

    // The pattern storm opens on the sixth pod: five requests before it, and its own.
    assert_eq!(storms.len(), 1, "{storms:?}");
    let storm = &storms[0]["fields"];
    assert_eq!((storm["actor"].as_str(), storm["storm_type"].as_str()), (Some("alertmanager"), Some("pattern")));
    assert_eq!((storm["signal"].as_str(), storm["namespace"].as_str()), (Some("DiskFull"), Some("payments")));
    let names: BTreeSet<_> = created.iter().map(|c| c["fields"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), created.len(), "one event per request created: {created:?}");
    assert!(names.contains(storm["name"].as_str().unwrap()), "the storm's request was created: {created:?}");
    assert!(created.iter().all(|c| c["fields"]["actor"] == "alertmanager"));
    let written = std::fs::read_dir(dir.path().join("sink").join("payments")).unwrap().count();
    assert_eq!(created.len(), written, "one event per manifest written");

    assert_eq!(refused.len(), 1, "{refused:?}");
    let refusal = &refused[0]["fields"];
    assert_eq!(refusal["actor"], "127.0.0.1");
    assert_eq!((refusal["reason"].as_str(), refusal["status"].as_u64()), (Some("auth_rejected"), Some(401)));
    assert_eq!(refusal["route"], "/api/v1/signals/prometheus");

    assert_eq!(rate_limited.len(), 1, "{rate_limited:?}");
    let limit = &rate_limited[0]["fields"];
    assert_eq!((limit["actor"].as_str(), limit["status"].as_u64()), (Some("alertmanager"), Some(503)));
    assert_eq!(limit["source_class"], "authenticated");
    assert!(limit["retry_after_s"].as_u64().unwrap() >= 1);

    // Every event carries exactly the schema's fields, and no credential is logged.
    for (event, fields) in audit::SCHEMA {
        for line in log.audit(event) {
            let mut have: BTreeSet<&str> = line["fields"].as_object().unwrap().keys().map(String::as_str).collect();
            have.remove("message");
            let want: BTreeSet<&str> = ["event"].into_iter().chain(fields.iter().copied()).collect();
            assert_eq!(have, want, "{event}");
        }
    }
    let all = log.0.lock().unwrap().iter().map(Value::to_string).collect::<String>();
    assert!(!all.contains(TOKEN) && !all.contains("not-the-token"), "a credential reached the log");
    kill(child);
}

#[tokio::test]
async fn a_flood_of_refused_requests_is_one_event_per_sender_and_reason_per_interval_with_every_refusal_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (child, log, url, client) = serve_with_token(dir.path(), 30, &[]).await;
    let post = |token: &'static str, pod: usize| {
        client
            .post(format!("{url}/api/v1/signals/prometheus"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&webhook(vec![alert("Flood", "payments", &format!("p-{pod}"))])).unwrap())
            .send()
    };
    // The sender's burst of 30, then 200 requests over its limit; and 100 with a
    // wrong token: 30 refused for it, 70 for the address's limit.
    for pod in 0..30 {
        assert!(post(TOKEN, pod).await.unwrap().status().is_success());
    }
    for pod in 30..230 {
        assert_eq!(post(TOKEN, pod).await.unwrap().status(), 503);
    }
    let mut statuses = std::collections::BTreeMap::new();
    for pod in 0..100 {
        *statuses.entry(post("wrong", pod).await.unwrap().status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 30), (503, 70)].into());
    let rate = |actor: &str| log.refusals(audit::RATE_LIMITED, actor, None);
    let credentials = || log.refusals(audit::AUTH_REFUSED, "127.0.0.1", Some("auth_rejected"));
    // At once: the first refusal of each.
    assert_eq!(rate("alertmanager").0, 1, "{:?}", log.audit(audit::RATE_LIMITED));
    assert_eq!(credentials().0, 1, "{:?}", log.audit(audit::AUTH_REFUSED));
    // Once the interval is over: one more event each, with every other refusal.
    let summed = poll_until(SUMMED, Duration::from_millis(100), || {
        let counts = (rate("alertmanager"), rate("127.0.0.1"), credentials());
        (counts.0 .1 == 200 && counts.1 .1 == 70 && counts.2 .1 == 30).then_some(counts)
    });
    let counts = summed.unwrap_or_else(|| {
        panic!("the counts never added up: {:?} {:?}", log.audit(audit::RATE_LIMITED), log.audit(audit::AUTH_REFUSED))
    });
    assert_eq!((counts.0 .0, counts.1 .0, counts.2 .0), (2, 2, 2), "two events each: {counts:?}");
    // Requests created are never summed: an event each (five, then the storm's).
    let created = log.audit(audit::REQUEST_CREATED);
    let names: BTreeSet<_> = created.iter().map(|c| c["fields"]["name"].as_str().unwrap().to_string()).collect();
    assert!(names.len() == created.len() && created.len() > 1, "{created:?}");
    kill(child);
}

#[tokio::test]
async fn a_flood_of_refused_client_certificates_is_counted_and_audited_once_per_address_and_reason() {
    let pki = support::tls::Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tidegate.yaml");
    let yaml = format!(
        "http:\n  tls:\n    cert_file: {}\n    key_file: {}\n    client_ca_file: {}\n    \
         client_auth_type: RequireAndVerifyClientCert\n    client_allowed_sans: ['{}']\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
        support::tls::SENDER_SAN
    );
    std::fs::write(&config, yaml).unwrap();
    let (child, log, port) = serve(dir.path(), &["--config", config.to_str().unwrap()], &[]);
    let url = format!("https://127.0.0.1:{port}");
    let sender = pki.client(Some((&pki.sender_cert, &pki.sender_key)));
    ready(&sender, &url).await;
    let impostor = pki.client(Some((&pki.stranger_cert, &pki.stranger_key)));
    for _ in 0..50 {
        // A new connection each time: a handshake each.
        let impostor = pki.client(Some((&pki.stranger_cert, &pki.stranger_key)));
        assert!(impostor.get(format!("{url}/healthz")).send().await.is_err());
    }
    drop(impostor);
    let metrics = sender.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tidegate_tls_handshake_failures_total{reason=\"unknown_ca\"} 50\n"), "{metrics}");
    let refused = || log.refusals(audit::TLS_REFUSED, "127.0.0.1", Some("unknown_ca"));
    assert_eq!(refused().0, 1, "{:?}", log.audit(audit::TLS_REFUSED));
    let summed = poll_until(SUMMED, Duration::from_millis(100), || (refused().1 == 50).then(refused));
    assert_eq!(summed.map(|(events, _)| events), Some(2), "{:?}", log.audit(audit::TLS_REFUSED));
    kill(child);
}

#[test]
fn the_readme_documents_every_audit_event_and_field() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("## Audit events\n").nth(1).expect("README has an Audit events section");
    let section = section.split("\n## ").next().unwrap();
    for (event, fields) in audit::SCHEMA {
        let row = section.lines().find(|l| l.starts_with(&format!("| `{event}`"))).unwrap_or_else(|| panic!("{event}"));
        for field in *fields {
            assert!(row.contains(&format!("`{field}`")), "README's row of {event} lacks {field}");
        }
    }
}

#[tokio::test]
async fn a_silence_is_audited_once_created_once_expired_and_once_per_incident_it_first_matches() {
    use tidegate::silence::dir::DirSilences;
    use tidegate::silence::resource::{RemediationSilence, RemediationSilenceSpec};
    use tidegate::silence::store::SilenceStore;
    let dir = tempfile::tempdir().unwrap();
    let silences = std::sync::Arc::new(DirSilences::new(dir.path().join("sink").join("_silences")).unwrap());
    let now = jiff::Timestamp::now();
    let spec = RemediationSilenceSpec {
        matchers: vec!["alertname=KubePodCrashLooping".into()],
        starts_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now - jiff::SignedDuration::from_mins(1)),
        ends_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now + jiff::SignedDuration::from_hours(1)),
        comment: "node drain".into(),
        created_by: None,
        time_intervals: Vec::new(),
    };
    let mut object = RemediationSilence::new("drain", spec);
    object.metadata.namespace = Some("shop".into());
    silences.create(&object).await.unwrap();
    let (child, log, port) = serve(dir.path(), &[], &[]);
    let (url, client) = (format!("http://127.0.0.1:{port}"), reqwest::Client::new());
    ready(&client, &url).await;
    let post = |pod: &str| {
        client
            .post(format!("{url}/api/v1/signals/prometheus"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&webhook(vec![alert("KubePodCrashLooping", "shop", pod)])).unwrap())
            .send()
    };

    // Three alerts of web-1's incident and one of web-2's, all silenced.
    for pod in ["web-1", "web-1", "web-2", "web-1"] {
        let answer: Value = post(pod).await.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "silenced", "{answer}");
    }
    let at = tidegate::silence::SilenceRef { namespace: "shop".into(), name: "drain".into() };
    silences.expire(&at, jiff::Timestamp::now()).await.unwrap();
    let expired = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let expired = log.audit(audit::SILENCE_EXPIRED);
        (!expired.is_empty()).then_some(expired)
    })
    .unwrap_or_else(|| panic!("no silence_expired event: {:?}", log.0.lock().unwrap()));
    // Once expired, its incident's next alert opens a request: the silence is done.
    eventually_within("the expired silence to let an alert through", Duration::from_secs(20), || async {
        let answer: Value = post("web-1").await.unwrap().json().await.unwrap();
        answer["status"] == "created"
    })
    .await;

    let (created, matched) = (log.audit(audit::SILENCE_CREATED), log.audit(audit::SILENCE_MATCHED));
    assert_eq!((created.len(), expired.len()), (1, 1), "{created:?} {expired:?}");
    assert_eq!(log.audit(audit::SILENCE_EXPIRED).len(), 1, "expired once");
    let incidents: BTreeSet<_> = matched.iter().map(|m| m["fields"]["fingerprint"].as_str().unwrap()).collect();
    assert_eq!((matched.len(), incidents.len()), (2, 2), "one event per incident, not per alert: {matched:?}");
    for event in created.iter().chain(&expired).chain(&matched) {
        let fields = &event["fields"];
        assert_eq!((fields["namespace"].as_str(), fields["name"].as_str()), (Some("shop"), Some("drain")), "{event}");
    }
    for (event, fields) in audit::SCHEMA.iter().filter(|(e, _)| e.starts_with("silence_")) {
        for line in log.audit(event) {
            let mut have: BTreeSet<&str> = line["fields"].as_object().unwrap().keys().map(String::as_str).collect();
            have.remove("message");
            let want: BTreeSet<&str> = ["event"].into_iter().chain(fields.iter().copied()).collect();
            assert_eq!(have, want, "{event}");
        }
    }
    kill(child);
}
