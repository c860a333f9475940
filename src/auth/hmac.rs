//! HMAC-SHA256 signatures over the body: Standard Webhooks and Grafana Alerting.
//!
//! Both recognise a request by its signature header, before the body is read, and
//! verify it once the body is (see [`super::Pending`]). Tags are compared in
//! constant time. Secrets are read from files, again when the files change, and
//! several may be listed (whitespace-separated) so that a secret can be rotated
//! without a window in which the sender's signatures fail.
//!
//! A Standard Webhooks message is recorded once. Its id is claimed in the replay
//! store of the state backend (shared by replicas through Redis) while it is
//! decided, and kept as delivered once it was answered 2xx, until its timestamp
//! leaves the tolerance (after which the timestamp check refuses the same bytes
//! anyway). A sender keeps the id across its retries and signs each with a fresh
//! timestamp: a retry of a delivered message is answered 2xx and records nothing; a
//! retry while the first delivery is still being decided is answered 503; a retry
//! of a message refused (4xx, 5xx) is decided anew. Never 4xx for a valid signature.
//!
//! Verification is ours, not the `standardwebhooks` crate's (the specification's
//! Rust library, which the tests sign with): its `verify` reads the system clock
//! with a fixed 5-minute tolerance (no `tolerance` setting, no injected clock),
//! takes one secret (a rotation needs a verifier per secret), refuses a body that is
//! not UTF-8, and decodes secrets as strict padded base64, refusing the unpadded
//! ones the Python library takes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use data_encoding::{Encoding, BASE64, BASE64_NOPAD, HEXLOWER_PERMISSIVE};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AuthError, Identity, Rejection, Secret, Step, Verified};
use crate::state::StateStore;
use crate::watched::{self, LoadError, Watched};

type HmacSha256 = Hmac<Sha256>;

const WEBHOOK_ID: &str = "webhook-id";
const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
const WEBHOOK_SIGNATURE: &str = "webhook-signature";

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StandardWebhooksConfig {
    /// The source name of requests signed with these secrets.
    pub source: String,
    /// File holding the `whsec_` secrets, whitespace-separated; a signature by any
    /// of them is accepted. Base64 with or without its `=` padding, as the
    /// reference libraries take it.
    pub secret_file: PathBuf,
    /// How far a message's `webhook-timestamp` may be from now, either way.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub tolerance: Duration,
}

impl Default for StandardWebhooksConfig {
    fn default() -> Self {
        StandardWebhooksConfig {
            source: String::new(),
            secret_file: PathBuf::new(),
            tolerance: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrafanaConfig {
    /// The source name of requests signed with these secrets.
    pub source: String,
    /// File holding the secret configured in Grafana's contact point (several,
    /// whitespace-separated, during a rotation).
    pub secret_file: PathBuf,
    /// The header that carries the hex signature. Grafana's documentation names
    /// `X-Grafana-Alerting-Signature`; some Grafana versions send
    /// `X-Grafana-Alert-Signature`: set whichever yours sends.
    pub header: String,
    /// The header that carries the timestamp Grafana signs with the body, when
    /// one is configured in Grafana: the signature then covers `timestamp:body`,
    /// and the timestamp must be within `tolerance` of now.
    pub timestamp_header: Option<String>,
    /// How far a signed timestamp may be from now, either way.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub tolerance: Duration,
}

impl Default for GrafanaConfig {
    fn default() -> Self {
        GrafanaConfig {
            source: String::new(),
            secret_file: PathBuf::new(),
            header: "X-Grafana-Alerting-Signature".into(),
            timestamp_header: None,
            tolerance: Duration::from_secs(300),
        }
    }
}

/// Reads whitespace-separated secrets from `path`, each turned into key bytes.
fn secrets(
    path: &Path,
    decode: impl Fn(&str) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> Result<Watched<Vec<Secret>>, LoadError> {
    let file = path.to_path_buf();
    Watched::new(vec![file.clone()], move || {
        let bytes = watched::read(&file)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| LoadError::invalid(&file, "not UTF-8"))?;
        let keys = text
            .split_whitespace()
            .map(|s| decode(s).map(Secret::new).ok_or_else(|| LoadError::invalid(&file, "a secret is malformed")))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(LoadError::invalid(&file, "no secret in the file"));
        }
        Ok(keys)
    })
}

fn mac(key: &Secret, parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key.expose()).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `now_s` and `timestamp_s` are within `tolerance` of each other.
fn fresh(timestamp_s: u64, now_s: u64, tolerance: Duration) -> bool {
    timestamp_s.abs_diff(now_s) <= tolerance.as_secs()
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

/// Standard Webhooks: `webhook-id`, `webhook-timestamp` and
/// `webhook-signature: v1,<base64>` over `id.timestamp.body`.
pub struct StandardWebhooks {
    /// Scopes replay ids, so two senders' ids never collide.
    name: String,
    source: Arc<str>,
    secrets: Watched<Vec<Secret>>,
    tolerance: Duration,
}

impl StandardWebhooks {
    pub fn load(name: &str, config: &StandardWebhooksConfig) -> Result<Self, LoadError> {
        Ok(StandardWebhooks {
            name: name.to_string(),
            source: config.source.as_str().into(),
            secrets: secrets(&config.secret_file, webhook_secret)?,
            tolerance: config.tolerance,
        })
    }

    pub(super) fn recognises(&self, headers: &HeaderMap) -> Step {
        match headers.contains_key(WEBHOOK_SIGNATURE) {
            true => Step::NeedsBody,
            false => Step::Pass(None),
        }
    }

    /// Checks the signature, then claims the message id (see the module's doc).
    pub(super) async fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: u64,
        replays: &Arc<dyn StateStore>,
    ) -> Result<Verified, AuthError> {
        let malformed = |what| AuthError::Rejected(Rejection::Malformed(what));
        let id = header(headers, WEBHOOK_ID).filter(|id| !id.is_empty()).ok_or(malformed("webhook-id is missing"))?;
        let timestamp = header(headers, WEBHOOK_TIMESTAMP).ok_or(malformed("webhook-timestamp is missing"))?;
        let timestamp_s: u64 = timestamp.parse().map_err(|_| malformed("webhook-timestamp is not Unix seconds"))?;
        let signatures = header(headers, WEBHOOK_SIGNATURE).ok_or(malformed("webhook-signature is missing"))?;
        if !fresh(timestamp_s, now_s, self.tolerance) {
            return Err(AuthError::Rejected(Rejection::Stale { tolerance_s: self.tolerance.as_secs() }));
        }
        let expected: Vec<[u8; 32]> = self
            .secrets
            .get()
            .iter()
            .map(|key| mac(key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]))
            .collect();
        let signed = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64.as_bytes()).ok())
            .any(|tag| expected.iter().any(|e| bool::from(e.as_slice().ct_eq(&tag))));
        if !signed {
            return Err(AuthError::Rejected(Rejection::BadSignature));
        }
        let identity = Identity::new(self.source.clone(), self.source.clone(), "standard_webhooks");
        // Kept until this timestamp goes stale: after that, the timestamp check
        // alone refuses these bytes, and a retry signed later is decided anew.
        let ttl = Duration::from_secs((timestamp_s + self.tolerance.as_secs()).saturating_sub(now_s) + 1);
        let (delivered, deciding) = (self.key(id, DELIVERED), self.key(id, DECIDING));
        // The deciding mark first: while one request holds it, no other takes the
        // delivered mark for proof that the message was answered.
        match replays.first_sighting(deciding, ttl).await {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::InFlight),
            Err(e) => return Err(AuthError::ReplayStore(e)),
        }
        match replays.first_sighting(delivered, ttl).await {
            Ok(true) => {
                let claim = Claim { delivered, deciding, ttl, replays: Some(replays.clone()) };
                Ok(Verified::New(identity, Some(claim)))
            }
            Ok(false) => {
                // Marked delivered, and nobody deciding it: it was answered 2xx.
                release(&**replays, deciding, ttl).await;
                Ok(Verified::Delivered(identity))
            }
            Err(e) => {
                release(&**replays, deciding, ttl).await;
                Err(AuthError::ReplayStore(e))
            }
        }
    }

    /// A replay-store key of a message id: fixed-size, per authenticator and per
    /// mark (`DELIVERED`, `DECIDING`).
    fn key(&self, id: &str, mark: u8) -> [u8; 16] {
        let digest = Sha256::new().chain_update(self.name.as_bytes()).chain_update([mark]).chain_update(id).finalize();
        digest[..16].try_into().expect("16 of 32 bytes")
    }
}

/// The marks a message id leaves in the replay store.
const DELIVERED: u8 = 0;
const DECIDING: u8 = 1;

/// A Standard Webhooks message being decided: its id marked delivered and
/// deciding in the replay store until [`Claim::settle`]. A claim dropped unsettled
/// (the sender hung up and its request was cancelled) is settled as not answered:
/// its retry is decided anew, so the message may count twice but is never lost.
pub struct Claim {
    delivered: [u8; 16],
    deciding: [u8; 16],
    ttl: Duration,
    replays: Option<Arc<dyn StateStore>>,
}

impl Claim {
    /// Settles the claim with the answer the request got: answered 2xx, the
    /// message stays delivered; otherwise nothing was recorded, and the sender's
    /// retry is decided anew.
    pub async fn settle(mut self, status: StatusCode) {
        let Some(replays) = self.replays.take() else { return };
        settle(&*replays, self.delivered, self.deciding, status.is_success(), self.ttl).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(replays) = self.replays.take() else { return };
        let (delivered, deciding, ttl) = (self.delivered, self.deciding, self.ttl);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { settle(&*replays, delivered, deciding, false, ttl).await });
        }
    }
}

async fn settle(replays: &dyn StateStore, delivered: [u8; 16], deciding: [u8; 16], answered: bool, ttl: Duration) {
    if !answered {
        if let Err(e) = replays.forget_sighting(delivered).await {
            // Left deciding too, so that no retry is told "delivered": retries get
            // 503 until both marks expire, then are decided anew.
            tracing::warn!(error = %e, ?ttl, "could not forget a refused message's id; its retries wait");
            return;
        }
    }
    release(replays, deciding, ttl).await;
}

async fn release(replays: &dyn StateStore, deciding: [u8; 16], ttl: Duration) {
    if let Err(e) = replays.forget_sighting(deciding).await {
        tracing::warn!(error = %e, ?ttl, "could not release a message's id; its retries wait");
    }
}

/// A Standard Webhooks secret: `whsec_` (optional) and base64 of the key, padded
/// or not, trailing bits unchecked: the union of what the reference libraries take
/// (Python pads before decoding and, like Go, does not check trailing bits; Go, JS
/// and Rust take padded base64). An empty key is refused, as they refuse it.
fn webhook_secret(text: &str) -> Option<Vec<u8>> {
    static LENIENT: std::sync::LazyLock<Encoding> = std::sync::LazyLock::new(|| {
        let mut spec = BASE64_NOPAD.specification();
        spec.check_trailing_bits = false;
        spec.encoding().expect("base64 without padding is a valid specification")
    });
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    let unpadded = encoded.strip_suffix("==").or_else(|| encoded.strip_suffix('=')).unwrap_or(encoded);
    LENIENT.decode(unpadded.as_bytes()).ok().filter(|key| !key.is_empty())
}

/// Grafana Alerting: a hex HMAC-SHA256 in a configured header, over the body, or
/// over `timestamp:body` when a timestamp header is configured.
pub struct Grafana {
    source: Arc<str>,
    secrets: Watched<Vec<Secret>>,
    header: String,
    timestamp_header: Option<String>,
    tolerance: Duration,
}

impl Grafana {
    pub fn load(config: &GrafanaConfig) -> Result<Self, LoadError> {
        Ok(Grafana {
            source: config.source.as_str().into(),
            secrets: secrets(&config.secret_file, |s| Some(s.as_bytes().to_vec()))?,
            header: config.header.clone(),
            timestamp_header: config.timestamp_header.clone(),
            tolerance: config.tolerance,
        })
    }

    pub(super) fn recognises(&self, headers: &HeaderMap) -> Step {
        match headers.contains_key(self.header.as_str()) {
            true => Step::NeedsBody,
            false => Step::Pass(None),
        }
    }

    pub(super) fn verify(&self, headers: &HeaderMap, body: &[u8], now_s: u64) -> Result<Identity, AuthError> {
        let malformed = |what| AuthError::Rejected(Rejection::Malformed(what));
        let signature = header(headers, &self.header).ok_or(malformed("the signature header is missing"))?;
        let tag = HEXLOWER_PERMISSIVE
            .decode(signature.trim().as_bytes())
            .map_err(|_| malformed("the signature is not hex"))?;
        let timestamp = match &self.timestamp_header {
            Some(name) => {
                let timestamp = header(headers, name).ok_or(malformed("the timestamp header is missing"))?;
                let timestamp_s: u64 = timestamp.parse().map_err(|_| malformed("the timestamp is not Unix seconds"))?;
                if !fresh(timestamp_s, now_s, self.tolerance) {
                    return Err(AuthError::Rejected(Rejection::Stale { tolerance_s: self.tolerance.as_secs() }));
                }
                Some(timestamp)
            }
            None => None,
        };
        let signed = self.secrets.get().iter().any(|key| {
            let expected = match timestamp {
                Some(ts) => mac(key, &[ts.as_bytes(), b":", body]),
                None => mac(key, &[body]),
            };
            bool::from(expected.as_slice().ct_eq(&tag))
        });
        match signed {
            true => Ok(Identity::new(self.source.clone(), self.source.clone(), "grafana")),
            false => Err(AuthError::Rejected(Rejection::BadSignature)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::headers;
    use crate::clock::Clock;
    use crate::state::memory::MemoryConfig;
    use crate::state::memory::MemoryStore;
    use crate::state::StormConfig;

    // The published Standard Webhooks test vector: `TestWebhookSign` in
    // standard-webhooks/standard-webhooks, libraries/go/webhook_test.go (the same
    // secret, id, timestamp and payload appear in the Python library's tests).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1614265330;
    const PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    struct Fixture {
        _dir: tempfile::TempDir,
        webhooks: StandardWebhooks,
        store: Arc<dyn StateStore>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("whsec_b2xkLXNlY3JldA== {SECRET}\n")).unwrap();
        let config = StandardWebhooksConfig { source: "falco".into(), secret_file: path, ..Default::default() };
        let webhooks = StandardWebhooks::load("sw", &config).unwrap();
        let store = Arc::new(MemoryStore::new(
            &MemoryConfig { max_entries: 10 },
            Duration::from_secs(300),
            &StormConfig::default(),
            Clock::System,
        ));
        Fixture { _dir: dir, webhooks, store }
    }

    fn signed(id: &str, timestamp: u64, signature: &str) -> HeaderMap {
        let ts = timestamp.to_string();
        headers(&[(WEBHOOK_ID, id), (WEBHOOK_TIMESTAMP, &ts), (WEBHOOK_SIGNATURE, signature)])
    }

    impl Fixture {
        async fn verify(&self, h: &HeaderMap, body: &[u8], now_s: u64) -> Result<Verified, AuthError> {
            self.webhooks.verify(h, body, now_s, &self.store).await
        }
    }

    #[tokio::test]
    async fn the_published_test_vector_is_claimed_while_decided_then_its_retries_are_delivered() {
        let f = fixture();
        let h = signed(MSG_ID, TIMESTAMP, SIGNATURE);
        assert!(matches!(f.webhooks.recognises(&h), Step::NeedsBody));
        let Ok(Verified::New(id, Some(claim))) = f.verify(&h, PAYLOAD, TIMESTAMP + 10).await else { panic!() };
        assert_eq!((&*id.name, id.method), ("falco", "standard_webhooks"));
        let meanwhile = f.verify(&h, PAYLOAD, TIMESTAMP + 11).await.err().unwrap();
        assert!(matches!(meanwhile, AuthError::InFlight), "{meanwhile:?}");
        claim.settle(StatusCode::CREATED).await;
        let Ok(Verified::Delivered(id)) = f.verify(&h, PAYLOAD, TIMESTAMP + 12).await else { panic!() };
        assert_eq!(&*id.name, "falco");
        assert!(matches!(f.verify(&h, PAYLOAD, TIMESTAMP + 13).await, Ok(Verified::Delivered(_))), "and again");
    }

    #[tokio::test]
    async fn a_message_answered_other_than_2xx_or_abandoned_is_decided_anew_when_retried() {
        let f = fixture();
        let h = signed(MSG_ID, TIMESTAMP, SIGNATURE);
        for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::BAD_REQUEST] {
            let Ok(Verified::New(_, Some(claim))) = f.verify(&h, PAYLOAD, TIMESTAMP).await else { panic!() };
            claim.settle(status).await;
        }
        let Ok(Verified::New(_, Some(claim))) = f.verify(&h, PAYLOAD, TIMESTAMP).await else { panic!() };
        drop(claim); // The request was cancelled: its release runs as a task.
        let mut retried = f.verify(&h, PAYLOAD, TIMESTAMP).await;
        while matches!(retried, Err(AuthError::InFlight)) {
            tokio::task::yield_now().await;
            retried = f.verify(&h, PAYLOAD, TIMESTAMP).await;
        }
        assert!(matches!(retried, Ok(Verified::New(_, Some(_)))));
    }

    #[tokio::test]
    async fn a_wrong_signature_or_body_is_refused_and_claims_no_id() {
        let f = fixture();
        let wrong = signed(MSG_ID, TIMESTAMP, "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=");
        let err = f.verify(&wrong, PAYLOAD, TIMESTAMP).await.err().unwrap();
        assert!(matches!(err, AuthError::Rejected(Rejection::BadSignature)));
        let h = signed(MSG_ID, TIMESTAMP, SIGNATURE);
        let err = f.verify(&h, br#"{"test": 1}"#, TIMESTAMP).await.err().unwrap();
        assert!(matches!(err, AuthError::Rejected(Rejection::BadSignature)));
        // Several signatures, one of them good (a sender mid-rotation).
        let multi = signed(MSG_ID, TIMESTAMP, &format!("v1,AAAA v2,zzz {SIGNATURE}"));
        assert!(matches!(f.verify(&multi, PAYLOAD, TIMESTAMP).await, Ok(Verified::New(..))));
    }

    #[tokio::test]
    async fn timestamps_beyond_five_minutes_either_way_are_stale() {
        let f = fixture();
        let h = signed(MSG_ID, TIMESTAMP, SIGNATURE);
        for now in [TIMESTAMP + 301, TIMESTAMP - 301] {
            let err = f.verify(&h, PAYLOAD, now).await.err().unwrap();
            assert!(matches!(err, AuthError::Rejected(Rejection::Stale { tolerance_s: 300 })), "{err:?}");
        }
        assert!(f.verify(&h, PAYLOAD, TIMESTAMP - 300).await.is_ok());
    }

    #[tokio::test]
    async fn missing_id_or_timestamp_is_malformed() {
        let f = fixture();
        let h = headers(&[(WEBHOOK_TIMESTAMP, "1614265330"), (WEBHOOK_SIGNATURE, SIGNATURE)]);
        let err = f.verify(&h, PAYLOAD, TIMESTAMP).await.err().unwrap();
        assert!(matches!(err, AuthError::Rejected(Rejection::Malformed("webhook-id is missing"))));
        let h = headers(&[(WEBHOOK_ID, MSG_ID), (WEBHOOK_SIGNATURE, SIGNATURE)]);
        let err = f.verify(&h, PAYLOAD, TIMESTAMP).await.err().unwrap();
        assert!(matches!(err, AuthError::Rejected(Rejection::Malformed("webhook-timestamp is missing"))));
    }

    #[test]
    fn secrets_are_base64_padded_or_not_with_or_without_the_prefix() {
        for len in [24, 32, 64] {
            let key: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37).wrapping_add(11)).collect();
            let padded = BASE64.encode(&key);
            let unpadded = padded.trim_end_matches('=');
            for text in [padded.clone(), unpadded.to_string(), format!("whsec_{padded}"), format!("whsec_{unpadded}")] {
                assert_eq!(webhook_secret(&text).as_deref(), Some(&key[..]), "{len} bytes as {text}");
            }
        }
        // Trailing bits are not checked, as Python's and Go's decoders do not.
        assert_eq!(webhook_secret("whsec_AB"), Some(vec![0]));
        for bad in ["whsec_", "", "whsec_!!!!", "whsec_A", "whsec_AAAA==="] {
            assert_eq!(webhook_secret(bad), None, "{bad:?}");
        }
    }

    fn grafana(timestamp_header: Option<&str>) -> (tempfile::TempDir, Grafana) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "grafana-secret\n").unwrap();
        let config = GrafanaConfig {
            source: "grafana".into(),
            secret_file: path,
            timestamp_header: timestamp_header.map(Into::into),
            ..Default::default()
        };
        (dir, Grafana::load(&config).unwrap())
    }

    fn hex_mac(secret: &[u8], message: &[u8]) -> String {
        hex::encode(mac(&Secret::new(secret.to_vec()), &[message]))
    }

    #[test]
    fn grafana_signs_the_body_in_its_documented_header_by_default() {
        let (_dir, g) = grafana(None);
        let body = br#"{"receiver":"tidegate"}"#;
        let good = headers(&[("x-grafana-alerting-signature", &hex_mac(b"grafana-secret", body))]);
        assert!(matches!(g.recognises(&good), Step::NeedsBody));
        assert_eq!(&*g.verify(&good, body, 0).unwrap().name, "grafana");
        let bad = headers(&[("x-grafana-alerting-signature", &hex_mac(b"other", body))]);
        assert!(matches!(g.verify(&bad, body, 0), Err(AuthError::Rejected(Rejection::BadSignature))));
        assert!(matches!(g.recognises(&headers(&[("x-grafana-alert-signature", "00")])), Step::Pass(None)));
    }

    #[test]
    fn grafana_with_a_timestamp_header_signs_timestamp_colon_body_and_checks_its_age() {
        let (_dir, g) = grafana(Some("X-Grafana-Alerting-Signature-Timestamp"));
        let body = b"{}";
        let sig = hex_mac(b"grafana-secret", b"1700000000:{}");
        let h = headers(&[
            ("x-grafana-alerting-signature", sig.as_str()),
            ("x-grafana-alerting-signature-timestamp", "1700000000"),
        ]);
        assert!(g.verify(&h, body, 1_700_000_100).is_ok());
        assert!(matches!(g.verify(&h, body, 1_700_000_301), Err(AuthError::Rejected(Rejection::Stale { .. }))));
        let body_only = headers(&[
            ("x-grafana-alerting-signature", &hex_mac(b"grafana-secret", body)),
            ("x-grafana-alerting-signature-timestamp", "1700000000"),
        ]);
        assert!(matches!(g.verify(&body_only, body, 1_700_000_000), Err(AuthError::Rejected(Rejection::BadSignature))));
    }
}
