//! Who may submit, over real HTTP and real TLS: each authenticator's good, bad,
//! missing and stale credentials, Standard Webhooks retries and replays (signed by
//! the specification's own library, also through a second gateway sharing Redis),
//! client certificates and refused handshakes, and the refusal to serve off
//! loopback without authentication. Kubernetes service-account tokens:
//! tests/auth_kube.rs.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use data_encoding::BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tidegate::auth::AuthConfig;
use tidegate::config::{Config, StateBackend};
use tidegate::gateway::{self, StartError};
use tidegate::remediation::SUBMITTED_BY_ANNOTATION;

use support::tls::{Pki, SENDER_SAN};
use support::{alert, problem, webhook, Gateway};

const PROMETHEUS: &str = "/api/v1/signals/prometheus";

/// Writes `content` to `dir/name`.
fn file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn auth(yaml: &str) -> AuthConfig {
    serde_norway::from_str(yaml).unwrap()
}

/// An alert webhook body, unique to `name`.
fn body(name: &str) -> Vec<u8> {
    serde_json::to_vec(&webhook(vec![alert(name, "payments", "api-0")])).unwrap()
}

async fn post(g: &Gateway, headers: &[(&str, &str)], body: Vec<u8>) -> reqwest::Response {
    let mut request = g.client.post(format!("{}{PROMETHEUS}", g.url)).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body).send().await.unwrap()
}

fn submitted_by(g: &Gateway) -> String {
    let request = g.only_request();
    request.metadata.annotations.unwrap_or_default()[SUBMITTED_BY_ANNOTATION].clone()
}

/// A gateway whose senders present the bearer token in `token` (as source
/// `alertmanager-prod`) or the basic password `s3cret` of user `ops`.
async fn with_tokens() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = file(dir.path(), "token", "am-token-1\n");
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let yaml = format!(
        "authenticators:\n  tokens: {{bearer: {{tokens: {{alertmanager-prod: {}}}}}}}\n  users: {{basic: {{users: {{ops: '{hash}'}}}}}}",
        token.display()
    );
    let g = support::start_with(|c| c.auth = auth(&yaml)).await;
    (g, dir)
}

#[tokio::test]
async fn a_bearer_token_names_its_source_on_the_request_and_in_metrics() {
    let (g, _dir) = with_tokens().await;
    let resp = post(&g, &[("authorization", "Bearer am-token-1")], body("Bearer")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(submitted_by(&g), "alertmanager-prod");
    let series = r#"tidegate_authenticated_requests_total{sender="alertmanager-prod",method="bearer"}"#;
    assert_eq!(g.metric(series).await, 1.0);
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
    let (g, _dir) = with_tokens().await;
    let basic = |user_password: &str| format!("Basic {}", BASE64.encode(user_password.as_bytes()));
    let wrong = problem(post(&g, &[("authorization", &basic("ops:guess"))], body("Wrong")).await, 401).await;
    let unknown = problem(post(&g, &[("authorization", &basic("mallory:s3cret"))], body("Unknown")).await, 401).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong["detail"], "the credentials were not accepted: the user name or the password is wrong");
}

#[tokio::test]
async fn a_route_no_configured_authenticator_fits_still_challenges_for_what_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let secret = file(dir.path(), "whsec", SECRET);
    // Only a signature is configured, and Alertmanager's route cannot sign.
    let yaml =
        format!("authenticators: {{sw: {{standard_webhooks: {{source: falco, secret_file: {}}}}}}}", secret.display());
    let g = support::start_with(|c| c.auth = auth(&yaml)).await;
    let missing = post(&g, &[], body("Missing")).await;
    assert_eq!(missing.headers()["www-authenticate"], r#"Signature realm="tidegate""#);
    problem(missing, 401).await;
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_401_with_a_challenge_and_create_nothing() {
    let (g, _dir) = with_tokens().await;
    let missing = post(&g, &[], body("Missing")).await;
    let challenge = missing.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert_eq!(challenge, r#"Bearer realm="tidegate", Basic realm="tidegate", charset="UTF-8""#);
    assert_eq!(problem(missing, 401).await["title"], "Unauthorized");
    let wrong = post(&g, &[("authorization", "Bearer am-token-2")], body("Wrong")).await;
    assert!(wrong.headers().contains_key("www-authenticate"));
    let detail = problem(wrong, 401).await["detail"].as_str().unwrap().to_string();
    assert!(!detail.contains("am-token"), "a credential in the answer: {detail}");
    let password = post(&g, &[("authorization", &format!("Basic {}", BASE64.encode(b"ops:guess")))], body("Pw")).await;
    problem(password, 401).await;
    assert!(g.manifests().is_empty());
    assert_eq!(g.metric(r#"tidegate_http_rejections_total{reason="auth_missing"}"#).await, 1.0);
    assert_eq!(g.metric(r#"tidegate_http_rejections_total{reason="auth_rejected"}"#).await, 2.0);
}

#[tokio::test]
async fn basic_auth_with_a_bcrypt_hash_identifies_the_user() {
    let (g, _dir) = with_tokens().await;
    let resp = post(&g, &[("authorization", &format!("Basic {}", BASE64.encode(b"ops:s3cret")))], body("Basic")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(submitted_by(&g), "ops");
}

#[tokio::test]
async fn a_rotated_token_file_takes_effect_without_a_restart() {
    let (g, dir) = with_tokens().await;
    file(dir.path(), "token", "am-token-2\n");
    support::eventually("the new token to be accepted", || async {
        post(&g, &[("authorization", "Bearer am-token-2")], body("Rotated")).await.status() == 201
    })
    .await;
    problem(post(&g, &[("authorization", "Bearer am-token-1")], body("Old")).await, 401).await;
}

/// Standard Webhooks headers for `body`, signed by the specification's Rust
/// library with `signer` as message `id` at `timestamp`.
fn signed_by(signer: &standardwebhooks::Webhook, id: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    let signature = signer.sign(id, timestamp as i64, body).unwrap();
    vec![("webhook-id", id.to_string()), ("webhook-timestamp", timestamp.to_string()), ("webhook-signature", signature)]
}

/// [`signed_by`] the library's reading of `secret` (`whsec_` and padded base64).
fn standard_webhooks(secret: &str, id: &str, timestamp: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    signed_by(&standardwebhooks::Webhook::new(secret).unwrap(), id, timestamp, body)
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The Alertmanager route guarded by a Standard Webhooks authenticator (source
/// `falco`), adjusted by `tweak`.
async fn with_signatures(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let secret = file(dir, "whsec", SECRET);
    let yaml = format!(
        "authenticators:\n  sw: {{standard_webhooks: {{source: falco, secret_file: {}}}}}\nendpoints:\n  {PROMETHEUS}: [sw]",
        secret.display()
    );
    support::start_with(|c| {
        c.auth = auth(&yaml);
        tweak(c);
    })
    .await
}

async fn post_signed(g: &Gateway, id: &str, timestamp: u64, body: Vec<u8>, secret: &str) -> reqwest::Response {
    let headers = standard_webhooks(secret, id, timestamp, &body);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(g, &headers, body).await
}

#[tokio::test]
async fn a_retry_of_a_delivered_message_signed_anew_is_answered_2xx_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let g = with_signatures(dir.path(), |_| {}).await;
    let sent = g.clock.now_s() as u64;
    assert_eq!(post_signed(&g, "msg_1", sent, body("Signed"), SECRET).await.status(), 201);
    assert_eq!(submitted_by(&g), "falco");
    // The sender lost the answer and retries: the same id, signed at a later time.
    g.clock.advance(Duration::from_secs(5));
    let retry = post_signed(&g, "msg_1", sent + 5, body("Signed"), SECRET).await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.json::<serde_json::Value>().await.unwrap()["status"], "already_delivered");
    // A captured request sent again as it was: the same answer, nothing recorded.
    let captured = post_signed(&g, "msg_1", sent, body("Signed"), SECRET).await;
    assert_eq!(captured.status(), 202);
    let requests = g.requests();
    assert_eq!((requests.len(), support::occurrences(&requests[0])), (1, 1), "nothing new was recorded");
    assert_eq!(
        g.metric(r#"tidegate_signals_received_total{source="prometheus-alert",outcome="duplicate"}"#).await,
        0.0
    );
}

#[tokio::test]
async fn a_wrong_signature_or_a_stale_timestamp_is_refused_even_for_a_delivered_id() {
    let dir = tempfile::tempdir().unwrap();
    let g = with_signatures(dir.path(), |_| {}).await;
    let now = g.clock.now_s() as u64;
    assert_eq!(post_signed(&g, "msg_2", now, body("Signed"), SECRET).await.status(), 201);
    let other = "whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==";
    let wrong = problem(post_signed(&g, "msg_2", now, body("Forged"), other).await, 401).await;
    assert_eq!(wrong["type"], "https://tidegate.dev/problems/auth-rejected");
    let stale = problem(post_signed(&g, "msg_3", now - 301, body("Stale"), SECRET).await, 401).await;
    assert_eq!(stale["type"], "https://tidegate.dev/problems/auth-stale");
    let unsigned = post(&g, &[("authorization", "Bearer x")], body("Unsigned")).await;
    assert_eq!(unsigned.headers()["www-authenticate"], r#"Signature realm="tidegate""#);
    assert_eq!(g.requests().len(), 1);
}

#[tokio::test]
async fn a_retry_through_a_second_gateway_sharing_redis_is_answered_2xx_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, prefix) = (support::redis::shared().url(), support::unique_prefix());
    let shared = |c: &mut Config| {
        c.state = StateBackend::Redis(url.parse().unwrap());
        c.redis.prefix = prefix.clone();
    };
    let (a, b) = (with_signatures(dir.path(), shared).await, with_signatures(dir.path(), shared).await);
    let now = a.clock.now_s() as u64;
    assert_eq!(post_signed(&a, "msg_shared", now, body("Shared"), SECRET).await.status(), 201);
    assert_eq!(post_signed(&b, "msg_shared", now + 1, body("Shared"), SECRET).await.status(), 202);
    assert!(b.manifests().is_empty());
}

#[tokio::test]
async fn secrets_of_24_32_and_64_bytes_padded_or_not_verify_what_the_reference_library_signs() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<Vec<u8>> = [24u8, 32, 64].iter().map(|&n| (0..n).map(|i| i.wrapping_mul(7) ^ n).collect()).collect();
    let mut texts = Vec::new();
    for key in &keys {
        let padded = format!("whsec_{}", BASE64.encode(key));
        texts.push(padded.trim_end_matches('=').to_string());
        texts.push(padded);
    }
    let file_ = file(dir.path(), "whsec", &texts.join(" "));
    let yaml = format!(
        "authenticators:\n  sw: {{standard_webhooks: {{source: falco, secret_file: {}}}}}\nendpoints:\n  {PROMETHEUS}: [sw]",
        file_.display()
    );
    let g = support::start_with(|c| c.auth = auth(&yaml)).await;
    let now = g.clock.now_s() as u64;
    for (i, key) in keys.iter().enumerate() {
        let signer = standardwebhooks::Webhook::from_bytes(key.clone()).unwrap();
        let body = body(&format!("Key{i}"));
        let headers = signed_by(&signer, &format!("msg_key_{i}"), now, &body);
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(post(&g, &headers, body).await.status(), 201, "the {}-byte key", key.len());
    }
}

#[tokio::test]
async fn a_signed_message_answered_503_is_accepted_when_retried() {
    let dir = tempfile::tempdir().unwrap();
    let g = with_signatures(dir.path(), |c| {
        c.rate_limit.rate = 1.0;
        c.rate_limit.burst = 1;
    })
    .await;
    let now = g.clock.now_s() as u64;
    assert_eq!(post_signed(&g, "msg_a", now, body("First"), SECRET).await.status(), 201);
    // Over falco's rate limit: 503, which the sender retries with the same id.
    problem(post_signed(&g, "msg_b", now, body("Second"), SECRET).await, 503).await;
    g.clock.advance(Duration::from_secs(2));
    let retried = post_signed(&g, "msg_b", now, body("Second"), SECRET).await;
    assert_eq!(retried.status(), 201, "the retry is not a replay");
}

#[tokio::test]
async fn grafanas_signature_in_its_documented_header_is_checked_over_the_body() {
    let dir = tempfile::tempdir().unwrap();
    let secret = file(dir.path(), "grafana", "grafana-secret");
    let yaml = format!(
        "authenticators:\n  g: {{grafana: {{source: grafana-ops, secret_file: {}}}}}\nendpoints:\n  {PROMETHEUS}: [g]",
        secret.display()
    );
    let g = support::start_with(|c| c.auth = auth(&yaml)).await;
    let sign = |body: &[u8], key: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    };
    let forged = body("Forged");
    let signature = sign(&forged, b"guess");
    problem(post(&g, &[("x-grafana-alerting-signature", &signature)], forged).await, 401).await;
    let good = body("Grafana");
    let signature = sign(&good, b"grafana-secret");
    assert_eq!(post(&g, &[("x-grafana-alerting-signature", &signature)], good).await.status(), 201);
    assert_eq!(submitted_by(&g), "grafana-ops");
}

/// A gateway serving TLS with `pki`'s server certificate, verifying client
/// certificates if given, identifying senders by them.
async fn over_tls(pki: &Pki) -> Gateway {
    let mut g = support::start_with(|c| {
        c.http.tls.cert_file = Some(pki.server_cert.clone());
        c.http.tls.key_file = Some(pki.server_key.clone());
        c.http.tls.client_ca_file = Some(pki.ca.clone());
        c.http.tls.client_auth_type = tidegate::http::tls::ClientAuthType::VerifyClientCertIfGiven;
        c.auth = auth(&format!("authenticators: {{mtls: {{client_certificate: {{sans: ['{SENDER_SAN}']}}}}}}"));
    })
    .await;
    g.url = g.url.replace("http://", "https://");
    g
}

#[tokio::test]
async fn over_tls_a_verified_client_certificate_names_the_sender() {
    let pki = Pki::generate();
    let mut g = over_tls(&pki).await;
    g.client = pki.client(Some((&pki.sender_cert, &pki.sender_key)));
    assert_eq!(post(&g, &[], body("Mtls")).await.status(), 201);
    assert_eq!(submitted_by(&g), SENDER_SAN);
    let series =
        format!(r#"tidegate_authenticated_requests_total{{sender="{SENDER_SAN}",method="client_certificate"}}"#);
    assert_eq!(g.metric(&series).await, 1.0);
}

#[tokio::test]
async fn over_tls_no_certificate_or_one_naming_no_accepted_sender_is_401() {
    let pki = Pki::generate();
    let mut g = over_tls(&pki).await;
    g.client = pki.client(None);
    let resp = post(&g, &[], body("NoCert")).await;
    assert_eq!(resp.headers()["www-authenticate"], r#"Certificate realm="tidegate""#);
    problem(resp, 401).await;
    g.client = pki.client(Some((&pki.client_cert, &pki.client_key)));
    problem(post(&g, &[], body("OtherCert")).await, 401).await;
    assert!(g.manifests().is_empty());
}

#[tokio::test]
async fn refused_client_certificates_are_counted_by_reason() {
    let pki = Pki::generate();
    let mut g = support::start_with(|c| {
        c.http.tls.cert_file = Some(pki.server_cert.clone());
        c.http.tls.key_file = Some(pki.server_key.clone());
        c.http.tls.client_ca_file = Some(pki.ca.clone());
        c.http.tls.client_auth_type = tidegate::http::tls::ClientAuthType::RequireAndVerifyClientCert;
        c.http.tls.client_allowed_sans = vec![SENDER_SAN.into()];
    })
    .await;
    g.url = g.url.replace("http://", "https://");
    let refused = [
        (Some((&pki.client_cert, &pki.client_key)), "san_not_allowed"),
        (Some((&pki.stranger_cert, &pki.stranger_key)), "unknown_ca"),
        (None, "no_certificate"),
    ];
    for (identity, _) in refused {
        g.client = pki.client(identity.map(|(c, k)| (c.as_path(), k.as_path())));
        assert!(g.client.get(format!("{}/healthz", g.url)).send().await.is_err());
    }
    g.client = pki.client(Some((&pki.sender_cert, &pki.sender_key)));
    for (_, reason) in refused {
        let series = format!(r#"tidegate_tls_handshake_failures_total{{reason="{reason}"}}"#);
        assert_eq!(g.metric(&series).await, 1.0, "{reason}");
    }
    assert_eq!(g.metric(r#"tidegate_tls_handshake_failures_total{reason="expired"}"#).await, 0.0);
}

#[tokio::test]
async fn plain_http_is_not_answered_on_a_tls_listener() {
    let pki = Pki::generate();
    let g = over_tls(&pki).await;
    let plain = g.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
}

#[tokio::test]
async fn serve_off_loopback_refuses_to_start_without_an_authenticator_unless_auth_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        listen: "0.0.0.0:0".parse().unwrap(),
        sink: tidegate::config::SinkTarget::Dir(dir.path().to_path_buf()),
        ..Config::default()
    };
    let clock = tidegate::clock::Clock::System;
    let refused = gateway::start(config.clone(), clock.clone()).await.err().expect("refused");
    assert!(matches!(refused, StartError::Config(_)));
    let message = refused.to_string();
    assert!(message.starts_with("listen: 0.0.0.0:0 is not a loopback address"), "{message}");
    assert!(message.contains("`auth: none`"), "{message}");

    config.auth = auth("none");
    let running = gateway::start(config, clock).await.expect("auth: none starts");
    running.shutdown();
    running.join().await.unwrap();
}

#[tokio::test]
async fn on_loopback_the_quick_start_needs_no_credentials() {
    let g = support::start().await;
    let resp = post(&g, &[], body("Quick")).await;
    assert_eq!(resp.status(), 201);
    assert_eq!(submitted_by(&g), "127.0.0.1", "without authentication the submitter is the address");
}
