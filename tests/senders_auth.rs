//! Debian's Alertmanager 0.25 authenticating to the gateway as an operator would
//! configure it: `authorization.credentials_file`, `basic_auth`, and `tls_config`
//! client certificates. Each case asserts on Alertmanager's own counters and on the
//! requests written; with a wrong credential nothing is created and Alertmanager
//! gives the notification up (a 401 is final for it).

mod support;

use std::path::Path;
use std::time::Duration;

use tidegate::auth::AuthConfig;
use tidegate::remediation::SUBMITTED_BY_ANNOTATION;

use support::senders::Rig;
use support::tls::{Pki, SENDER_SAN};

const DELIVERY: Duration = Duration::from_secs(30);

fn auth(yaml: &str) -> AuthConfig {
    serde_norway::from_str(yaml).unwrap()
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

/// Fires one alert and waits for its request; returns who submitted it.
async fn delivered_by(rig: &Rig) -> String {
    rig.target.set("shop", ["web-0"], 1.0);
    rig.wait_for("the request", DELIVERY, || async { !rig.gateway.requests().is_empty() }).await;
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!((am.failed, am.requests_failed), (0, 0), "{am:?}\n{}", rig.logs());
    let request = rig.gateway.requests().remove(0);
    request.metadata.annotations.unwrap_or_default()[SUBMITTED_BY_ANNOTATION].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_delivers_with_a_bearer_token_from_its_credentials_file() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "am-secret-token\n");
    let yaml = format!("authenticators: {{t: {{bearer: {{tokens: {{alertmanager-prod: {token}}}}}}}}}");
    let http_config = format!("{{authorization: {{type: Bearer, credentials_file: {token}}}}}");
    let rig = Rig::start_with("1h", |c| c.auth = auth(&yaml), &http_config).await;
    assert_eq!(delivered_by(&rig).await, "alertmanager-prod");
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_delivers_with_basic_auth() {
    let hash = bcrypt::hash("am-password", 4).unwrap();
    let yaml = format!("authenticators: {{b: {{basic: {{users: {{alertmanager: '{hash}'}}}}}}}}");
    let http_config = "{basic_auth: {username: alertmanager, password: am-password}}";
    let rig = Rig::start_with("1h", |c| c.auth = auth(&yaml), http_config).await;
    assert_eq!(delivered_by(&rig).await, "alertmanager");
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_delivers_over_tls_with_a_client_certificate() {
    let pki = Pki::generate();
    let yaml = format!("authenticators: {{m: {{client_certificate: {{sans: ['{SENDER_SAN}']}}}}}}");
    let tweak = |c: &mut tidegate::config::Config| {
        c.http.tls.cert_file = Some(pki.server_cert.clone());
        c.http.tls.key_file = Some(pki.server_key.clone());
        c.http.tls.client_ca_file = Some(pki.ca.clone());
        c.http.tls.client_auth_type = tidegate::http::tls::ClientAuthType::RequireAndVerifyClientCert;
        c.auth = auth(&yaml);
    };
    let http_config = format!(
        "{{tls_config: {{ca_file: {}, cert_file: {}, key_file: {}}}}}",
        pki.ca.display(),
        pki.sender_cert.display(),
        pki.sender_key.display()
    );
    let rig = Rig::start_with("1h", tweak, &http_config).await;
    assert_eq!(delivered_by(&rig).await, SENDER_SAN);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_wrong_credential_nothing_is_created_and_alertmanager_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "the-right-token");
    let wrong = write(dir.path(), "wrong", "a-wrong-token");
    let yaml = format!("authenticators: {{t: {{bearer: {{tokens: {{alertmanager-prod: {token}}}}}}}}}");
    let http_config = format!("{{authorization: {{type: Bearer, credentials_file: {wrong}}}}}");
    let rig = Rig::start_with("1h", |c| c.auth = auth(&yaml), &http_config).await;
    rig.target.set("shop", ["web-0"], 1.0);
    rig.wait_for("Alertmanager to give the notification up", DELIVERY, || async {
        rig.alertmanager.counters().await.failed >= 1
    })
    .await;
    let am = rig.alertmanager.settled_counters().await;
    assert_eq!(am.delivered(), 0, "{am:?}");
    assert!(rig.gateway.requests().is_empty());
}
