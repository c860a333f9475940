//! Who may submit signals: the `auth` section, its authenticators, and the chain
//! each endpoint checks a request against.
//!
//! An endpoint has an ordered list of authenticators. The first that recognises
//! the request's credentials decides: it answers with the sender's [`Identity`], or
//! with an [`AuthError`]. One that does not recognise them (no credentials of its
//! kind, a token it does not know) passes the request on; if none recognises them,
//! the request is unauthenticated (401).
//!
//! Credentials are checked from the request's head, before its body is read, except
//! by the HMAC authenticators, whose signature covers the body: they recognise the
//! request from its head and verify it once the (bounded) body is read.
//!
//! Nothing here ever logs or formats a credential: secrets are held in [`Secret`],
//! whose `Debug` is redacted, and caches key on a SHA-256 of the credential.

pub mod basic;
pub mod bearer;
pub mod cache;
pub mod cert;
pub mod hmac;
pub mod kubernetes;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::watched::LoadError;

/// The `auth` section: named authenticators, and which of them each endpoint
/// tries, in order. Written `auth: none`, authentication is off on purpose.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(try_from = "AuthSetting", into = "AuthSetting")]
pub struct AuthConfig {
    /// Authentication was turned off explicitly (`auth: none`).
    pub none: bool,
    pub sections: AuthSections,
}

/// The `auth` section as written: `none`, or the sections.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
enum AuthSetting {
    Off(Off),
    On(AuthSections),
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Off {
    None,
}

impl From<AuthSetting> for AuthConfig {
    fn from(setting: AuthSetting) -> Self {
        match setting {
            AuthSetting::Off(Off::None) => AuthConfig { none: true, sections: AuthSections::default() },
            AuthSetting::On(sections) => AuthConfig { none: false, sections },
        }
    }
}

impl From<AuthConfig> for AuthSetting {
    fn from(config: AuthConfig) -> Self {
        if config.none {
            AuthSetting::Off(Off::None)
        } else {
            AuthSetting::On(config.sections)
        }
    }
}

/// The authenticators, and which endpoint uses which.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSections {
    /// Authenticators by name. A name is what endpoint lists refer to, and the
    /// metric label of senders it identifies that have no configured name of their
    /// own.
    pub authenticators: BTreeMap<String, AuthenticatorConfig>,
    /// The authenticators every endpoint tries, in order, unless it has a list in
    /// `endpoints`.
    pub default: Vec<String>,
    /// Per endpoint (its route, e.g. `/api/v2/alerts`): the authenticators it tries,
    /// in order, instead of `default`.
    pub endpoints: BTreeMap<String, Vec<String>>,
}

/// One authenticator: its kind and settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthenticatorConfig {
    /// Static bearer tokens (`Authorization: Bearer`), read from files.
    Bearer(bearer::BearerConfig),
    /// HTTP basic auth with bcrypt-hashed passwords.
    Basic(basic::BasicConfig),
    /// Standard Webhooks HMAC signatures (`webhook-signature`).
    StandardWebhooks(hmac::StandardWebhooksConfig),
    /// Grafana Alerting's HMAC signature header.
    Grafana(hmac::GrafanaConfig),
    /// Kubernetes service-account tokens: TokenReview, then SubjectAccessReview.
    Kubernetes(kubernetes::KubernetesConfig),
    /// The verified client certificate of the TLS connection.
    ClientCertificate(cert::ClientCertificateConfig),
}

/// The kinds of authenticator, as the source table names what each sender can
/// present.
pub mod kind {
    pub const BEARER: &str = "bearer";
    pub const BASIC: &str = "basic";
    pub const STANDARD_WEBHOOKS: &str = "standard_webhooks";
    pub const GRAFANA: &str = "grafana";
    pub const KUBERNETES: &str = "kubernetes";
    pub const CLIENT_CERTIFICATE: &str = "client_certificate";
    /// What any HTTP client can present in its head: tokens, passwords, certificates.
    pub const HEAD: &[&str] = &[BEARER, BASIC, KUBERNETES, CLIENT_CERTIFICATE];
}

impl AuthenticatorConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthenticatorConfig::Bearer(_) => kind::BEARER,
            AuthenticatorConfig::Basic(_) => kind::BASIC,
            AuthenticatorConfig::StandardWebhooks(_) => kind::STANDARD_WEBHOOKS,
            AuthenticatorConfig::Grafana(_) => kind::GRAFANA,
            AuthenticatorConfig::Kubernetes(_) => kind::KUBERNETES,
            AuthenticatorConfig::ClientCertificate(_) => kind::CLIENT_CERTIFICATE,
        }
    }
}

/// Why the `auth` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("auth.{list} names {name:?}, which is not in auth.authenticators")]
    Unknown { list: String, name: String },
    #[error("auth.authenticators.{name}: {source}")]
    Load {
        name: String,
        #[source]
        source: LoadError,
    },
    #[error("auth.authenticators.{name}: {source}")]
    Basic {
        name: String,
        #[source]
        source: basic::UsersError,
    },
    #[error("auth.authenticators.{name}: {source}")]
    Kubernetes {
        name: String,
        #[source]
        source: kubernetes::ReviewerError,
    },
    #[error("auth.authenticators.{name}: a kubernetes authenticator needs a Kubernetes client")]
    NoKubeClient { name: String },
    #[error("auth.endpoints names {route:?}, which is not a route of any source")]
    NoRoute { route: String },
}

impl AuthConfig {
    /// Whether any endpoint checks credentials: some authenticator is configured
    /// and authentication was not turned off.
    pub fn enabled(&self) -> bool {
        !self.none && !self.sections.authenticators.is_empty()
    }

    /// Builds every authenticator (reading its files) and the chain of each of
    /// `routes`: a route and the kinds of authenticator its sender can present.
    /// A route's chain is its list in `endpoints` (an empty list: no
    /// authentication), else `default` (else every authenticator, by name) less
    /// those its sender cannot present. A route left with none refuses every
    /// request rather than take anyone's. `kube` is required when a `kubernetes`
    /// authenticator is configured.
    pub fn build(&self, kube: Option<kube::Client>, routes: &[(&str, &[&str])]) -> Result<Auth, BuildError> {
        let mut auth = Auth { chains: BTreeMap::new() };
        if !self.enabled() {
            return Ok(auth);
        }
        let s = &self.sections;
        let mut built = BTreeMap::new();
        for (name, config) in &s.authenticators {
            let label: Arc<str> = name.as_str().into();
            let load = |source| BuildError::Load { name: name.clone(), source };
            let authenticator = match config {
                AuthenticatorConfig::Bearer(c) => Authenticator::Bearer(bearer::Tokens::load(c).map_err(load)?),
                AuthenticatorConfig::Basic(c) => Authenticator::Basic(
                    basic::Users::new(c).map_err(|source| BuildError::Basic { name: name.clone(), source })?,
                ),
                AuthenticatorConfig::StandardWebhooks(c) => {
                    Authenticator::StandardWebhooks(hmac::StandardWebhooks::load(name, c).map_err(load)?)
                }
                AuthenticatorConfig::Grafana(c) => Authenticator::Grafana(hmac::Grafana::load(c).map_err(load)?),
                AuthenticatorConfig::Kubernetes(c) => {
                    let client = kube.clone().ok_or_else(|| BuildError::NoKubeClient { name: name.clone() })?;
                    Authenticator::Kubernetes(Box::new(
                        kubernetes::Reviewer::new(client, c, label.clone())
                            .map_err(|source| BuildError::Kubernetes { name: name.clone(), source })?,
                    ))
                }
                AuthenticatorConfig::ClientCertificate(c) => {
                    Authenticator::ClientCertificate(cert::Certificates::new(c, label.clone()))
                }
            };
            built.insert(name.as_str(), (config.kind(), Arc::new(authenticator)));
        }
        let find = |list: &str, name: &String| {
            built.get(name.as_str()).ok_or_else(|| BuildError::Unknown { list: list.into(), name: name.clone() })
        };
        for name in &s.default {
            find("default", name)?;
        }
        let configured: Vec<Arc<Authenticator>> = built.values().map(|(_, a)| a.clone()).collect();
        for route in s.endpoints.keys() {
            if !routes.iter().any(|(r, _)| r == route) {
                return Err(BuildError::NoRoute { route: route.clone() });
            }
        }
        for (route, kinds) in routes {
            let chain = match s.endpoints.get(*route) {
                Some(names) if names.is_empty() => None,
                Some(names) => {
                    let list = format!("endpoints.{route}");
                    let steps = names.iter().map(|n| find(&list, n).map(|(_, a)| a.clone()));
                    Some(Arc::new(Chain::new(steps.collect::<Result<_, _>>()?, &configured)))
                }
                None => {
                    let names: Vec<&str> = match s.default.is_empty() {
                        true => built.keys().copied().collect(),
                        false => s.default.iter().map(String::as_str).collect(),
                    };
                    let steps = names.iter().map(|n| &built[n]).filter(|(kind, _)| kinds.contains(kind));
                    Some(Arc::new(Chain::new(steps.map(|(_, a)| a.clone()).collect(), &configured)))
                }
            };
            auth.chains.insert(route.to_string(), chain);
        }
        Ok(auth)
    }

    /// Every sender label and method an authenticator can identify a request as
    /// (`tidegate_authenticated_requests_total{sender,method}`): configured names,
    /// a fixed set, so the series can be made at 0 from the start.
    pub fn senders(&self) -> Vec<(String, &'static str)> {
        let mut senders = Vec::new();
        if !self.enabled() {
            return senders;
        }
        for (name, config) in &self.sections.authenticators {
            let method = config.kind();
            let labels: Vec<String> = match config {
                AuthenticatorConfig::Bearer(c) => c.tokens.keys().cloned().collect(),
                AuthenticatorConfig::Basic(c) => c.users.keys().cloned().collect(),
                AuthenticatorConfig::StandardWebhooks(c) => vec![c.source.clone()],
                AuthenticatorConfig::Grafana(c) => vec![c.source.clone()],
                AuthenticatorConfig::Kubernetes(_) => vec![name.clone()],
                AuthenticatorConfig::ClientCertificate(c) if c.sans.is_empty() => vec![name.clone()],
                AuthenticatorConfig::ClientCertificate(c) => c.sans.clone(),
            };
            senders.extend(labels.into_iter().map(|label| (label, method)));
        }
        senders.sort();
        senders.dedup();
        senders
    }

    /// The kinds of the authenticators configured, for start-up logs.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.sections.authenticators.values().map(AuthenticatorConfig::kind).collect()
    }
}

/// Every route's chain, built.
pub struct Auth {
    /// A route with `None` checks nothing.
    chains: BTreeMap<String, Option<Arc<Chain>>>,
}

impl Auth {
    /// The chain `route` checks requests against; `None` if it checks nothing.
    pub fn chain(&self, route: &str) -> Option<Arc<Chain>> {
        self.chains.get(route).cloned().flatten()
    }
}

/// A secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Box<[u8]>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Who sent a request, as an authenticator established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The sender's name: the rate-limit key, the `tidegate.dev/submitted-by`
    /// annotation and the audit log's actor.
    pub name: Arc<str>,
    /// A name from the configuration (a configured source, user or authenticator),
    /// so that metric labels stay bounded whatever senders present.
    pub label: Arc<str>,
    /// The kind of authenticator that established it.
    pub method: &'static str,
}

impl Identity {
    fn new(name: impl Into<Arc<str>>, label: Arc<str>, method: &'static str) -> Self {
        Identity { name: name.into(), label, method }
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials any authenticator of the endpoint looks for (401).
    #[error("no credentials were presented")]
    Missing,
    /// Credentials were presented but not accepted (401).
    #[error("the credentials were not accepted: {0}")]
    Rejected(Rejection),
    /// The sender is known but may not submit signals here (403).
    #[error("{name} is not allowed to submit signals: {reason}")]
    Forbidden { name: String, reason: String },
    /// The authority that checks the credentials could not answer; the sender
    /// should retry (503 with `Retry-After`, never 401).
    #[error("cannot check the credentials now: {0}")]
    Unavailable(#[source] kubernetes::ReviewError),
    /// The replay store could not answer; the sender should retry (503).
    #[error("cannot check for replays now: {0}")]
    ReplayStore(#[source] crate::state::StateError),
    /// A signed message whose earlier delivery is still being decided: the sender
    /// should retry (503), and its retry gets that delivery's outcome.
    #[error("an earlier delivery of this message is still being decided")]
    InFlight,
}

/// Why presented credentials were not accepted. What a sender is told: a wrong
/// password and an unknown user read the same, so that the answer does not say
/// which user names exist; [`Rejection::cause`] tells them apart for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no authenticator recognised them")]
    Unknown,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{BAD_USER_OR_PASSWORD}")]
    WrongPassword,
    #[error("{BAD_USER_OR_PASSWORD}")]
    UnknownUser,
    #[error("the signature does not match")]
    BadSignature,
    #[error("the signature's timestamp is outside the tolerance of {tolerance_s}s")]
    Stale { tolerance_s: u64 },
    /// The token authority's own words (TokenReview's `status.error`): expired,
    /// wrong audience, unknown.
    #[error("token review: {0}")]
    NotAuthenticated(String),
}

const BAD_USER_OR_PASSWORD: &str = "the user name or the password is wrong";

impl Rejection {
    /// What exactly was wrong, for the audit log only (`cause`): one of a fixed set.
    pub fn cause(&self) -> &'static str {
        match self {
            Rejection::Unknown => "unknown_credentials",
            Rejection::Malformed(_) => "malformed",
            Rejection::WrongPassword => "wrong_password",
            Rejection::UnknownUser => "unknown_user",
            Rejection::BadSignature => "bad_signature",
            Rejection::Stale { .. } => "stale_timestamp",
            Rejection::NotAuthenticated(_) => "token_not_authenticated",
        }
    }
}

impl AuthError {
    /// Every value [`AuthError::label`] takes, for metrics initialised at 0.
    pub const REASONS: &'static [&'static str] =
        &["auth_missing", "auth_rejected", "auth_stale", "auth_forbidden", "auth_unavailable", "auth_in_flight"];

    /// The metric label of this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "auth_missing",
            AuthError::Rejected(Rejection::Stale { .. }) => "auth_stale",
            AuthError::Rejected(_) => "auth_rejected",
            AuthError::Forbidden { .. } => "auth_forbidden",
            AuthError::Unavailable(_) | AuthError::ReplayStore(_) => "auth_unavailable",
            AuthError::InFlight => "auth_in_flight",
        }
    }

    /// [`Rejection::cause`], and the like for the other refusals: the audit log's
    /// `cause`, finer than `reason` and never told to the sender.
    pub fn cause(&self) -> &'static str {
        match self {
            AuthError::Missing => "no_credentials",
            AuthError::Rejected(rejection) => rejection.cause(),
            AuthError::Forbidden { .. } => "not_allowed",
            AuthError::Unavailable(_) => "authority_unavailable",
            AuthError::ReplayStore(_) => "replay_store_unavailable",
            AuthError::InFlight => "delivery_in_flight",
        }
    }
}

/// What a request presents: its headers and, over TLS, its verified client
/// certificate.
#[derive(Clone, Copy)]
pub struct Presented<'a> {
    pub headers: &'a HeaderMap,
    pub peer: Option<&'a cert::PeerCertificate>,
}

/// One configured authenticator.
pub enum Authenticator {
    Bearer(bearer::Tokens),
    Basic(basic::Users),
    StandardWebhooks(hmac::StandardWebhooks),
    Grafana(hmac::Grafana),
    /// Boxed: its API handles make it several times the size of the others.
    Kubernetes(Box<kubernetes::Reviewer>),
    ClientCertificate(cert::Certificates),
}

/// What an authenticator makes of a request's head.
enum Step {
    /// Not credentials of its kind, or not ones it knows: the next one is asked.
    Pass(Option<Rejection>),
    Identified(Identity),
    /// Its signature is on the request: the body decides.
    NeedsBody,
}

impl Authenticator {
    async fn check_head(&self, presented: &Presented<'_>) -> Result<Step, AuthError> {
        match self {
            Authenticator::Bearer(tokens) => Ok(tokens.check(presented.headers)),
            Authenticator::Basic(users) => users.check(presented.headers).await,
            Authenticator::StandardWebhooks(s) => Ok(s.recognises(presented.headers)),
            Authenticator::Grafana(g) => Ok(g.recognises(presented.headers)),
            Authenticator::Kubernetes(reviewer) => reviewer.check(presented.headers).await,
            Authenticator::ClientCertificate(certs) => Ok(certs.check(presented.peer)),
        }
    }

    const BEARER_CHALLENGE: &'static str = r#"Bearer realm="tidegate""#;

    /// The `WWW-Authenticate` challenge of its kind.
    fn challenge(&self) -> &'static str {
        match self {
            Authenticator::Bearer(_) | Authenticator::Kubernetes(_) => Self::BEARER_CHALLENGE,
            Authenticator::Basic(_) => r#"Basic realm="tidegate", charset="UTF-8""#,
            Authenticator::StandardWebhooks(_) | Authenticator::Grafana(_) => r#"Signature realm="tidegate""#,
            Authenticator::ClientCertificate(_) => r#"Certificate realm="tidegate""#,
        }
    }
}

/// An endpoint's authenticators, in order.
pub struct Chain {
    steps: Vec<Arc<Authenticator>>,
    challenge: HeaderValue,
}

/// What a chain makes of a request's head.
pub enum Checked {
    Identified(Identity),
    /// An HMAC authenticator recognised the request: [`Pending::verify`] decides
    /// once the body is read.
    Pending(Pending),
}

/// An HMAC authenticator waiting for the body its signature covers.
pub struct Pending(Arc<Authenticator>);

impl Chain {
    /// A chain of `steps`. Its 401s challenge for the schemes of `steps`, or, when
    /// no configured authenticator fits the route (`steps` is empty), for those of
    /// every one `configured`: RFC 9110 §11.6.1 wants at least one challenge, and
    /// the schemes the gateway does take tell an operator what to configure.
    fn new(steps: Vec<Arc<Authenticator>>, configured: &[Arc<Authenticator>]) -> Self {
        let mut challenges: Vec<&str> = Vec::new();
        let challenging = if steps.is_empty() { configured } else { &steps };
        for step in challenging {
            if !challenges.contains(&step.challenge()) {
                challenges.push(step.challenge());
            }
        }
        if challenges.is_empty() {
            challenges.push(Authenticator::BEARER_CHALLENGE);
        }
        let challenge = HeaderValue::from_str(&challenges.join(", ")).expect("static challenges are valid");
        Chain { steps, challenge }
    }

    /// The `WWW-Authenticate` value of a 401 from this chain.
    pub fn challenge(&self) -> &HeaderValue {
        &self.challenge
    }

    /// Checks the request's head: the first authenticator that recognises the
    /// credentials decides.
    pub async fn check(&self, presented: &Presented<'_>) -> Result<Checked, AuthError> {
        let mut rejection = None;
        for step in &self.steps {
            match step.check_head(presented).await? {
                Step::Identified(identity) => return Ok(Checked::Identified(identity)),
                Step::NeedsBody => return Ok(Checked::Pending(Pending(step.clone()))),
                Step::Pass(why) => rejection = why.or(rejection),
            }
        }
        let presented_any = presented.headers.contains_key(axum::http::header::AUTHORIZATION)
            || presented.peer.is_some()
            || rejection.is_some();
        Err(match (rejection, presented_any) {
            (Some(why), _) => AuthError::Rejected(why),
            (None, true) => AuthError::Rejected(Rejection::Unknown),
            (None, false) => AuthError::Missing,
        })
    }
}

/// What a verified signature lets a request do.
pub enum Verified {
    /// A message not delivered before: decide it, then [`Claim::settle`] its claim
    /// with the answer.
    New(Identity, Option<hmac::Claim>),
    /// The sender's retry of a message already answered 2xx (its answer was lost):
    /// answer 2xx again and record nothing.
    Delivered(Identity),
}

impl Pending {
    /// Verifies the signature over `body` at `now_s`, Unix seconds, then, for a
    /// message with an id, claims it in `replays`: a message already delivered is
    /// [`Verified::Delivered`], one whose delivery is still being decided
    /// [`AuthError::InFlight`].
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_s: u64,
        replays: &Arc<dyn crate::state::StateStore>,
    ) -> Result<Verified, AuthError> {
        match &*self.0 {
            Authenticator::StandardWebhooks(s) => s.verify(headers, body, now_s, replays).await,
            Authenticator::Grafana(g) => g.verify(headers, body, now_s).map(|id| Verified::New(id, None)),
            _ => unreachable!("only HMAC authenticators wait for the body"),
        }
    }
}

/// The credential of an `Authorization: <scheme> <credential>` header, if it has
/// that scheme (compared case-insensitively, as RFC 9110 says).
fn authorization<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (given, credential) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| credential.trim())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Routes as the source table gives them: two whose senders present anything
    /// in their heads, one that can only sign.
    const ROUTES: &[(&str, &[&str])] = &[("/a", kind::HEAD), ("/open", kind::HEAD), ("/hmac", &[kind::GRAFANA])];

    pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn auth_none_is_explicit_and_distinct_from_an_empty_section() {
        let off: AuthConfig = serde_norway::from_str("none").unwrap();
        assert!(off.none && !off.enabled());
        let empty: AuthConfig = serde_norway::from_str("{}").unwrap();
        assert!(!empty.none && !empty.enabled());
        assert!(off.build(None, ROUTES).unwrap().chain("/a").is_none());
        assert!(serde_norway::from_str::<AuthConfig>("nothing").is_err());
        assert_eq!(serde_norway::to_string(&off).unwrap().trim(), "none");
    }

    #[test]
    fn an_endpoint_list_naming_an_unknown_authenticator_is_refused() {
        let config: AuthConfig =
            serde_norway::from_str("authenticators: {c: {client_certificate: {}}}\ndefault: [ghost]").unwrap();
        let err = config.build(None, ROUTES).err().unwrap().to_string();
        assert_eq!(err, r#"auth.default names "ghost", which is not in auth.authenticators"#);
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }

    #[tokio::test]
    async fn the_first_authenticator_that_recognises_the_credentials_decides_and_routes_get_what_they_can_use() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("am"), "token-a\n").unwrap();
        let yaml = format!(
            "authenticators:\n  tokens:\n    bearer:\n      tokens:\n        alertmanager: {}\n  \
             users:\n    basic:\n      users:\n        ops: {}\n\
             default: [users, tokens]\n\
             endpoints:\n  /open: []\n",
            dir.path().join("am").display(),
            bcrypt::hash("pw", 4).unwrap(),
        );
        let config: AuthConfig = serde_norway::from_str(&yaml).unwrap();
        let auth = config.build(None, ROUTES).unwrap();
        assert!(auth.chain("/open").is_none(), "an empty list checks nothing");
        let hmac_only = auth.chain("/hmac").unwrap();
        let none = Presented { headers: &HeaderMap::new(), peer: None };
        assert!(matches!(hmac_only.check(&none).await, Err(AuthError::Missing)), "no usable authenticator: closed");
        // Every configured authenticator's, by name: `tokens`, then `users`.
        let every_configured = r#"Bearer realm="tidegate", Basic realm="tidegate", charset="UTF-8""#;
        assert_eq!(hmac_only.challenge(), every_configured, "still a challenge (RFC 9110 §11.6.1)");
        let chain = auth.chain("/a").unwrap();
        assert_eq!(chain.challenge(), r#"Basic realm="tidegate", charset="UTF-8", Bearer realm="tidegate""#);

        let check = |pairs: &'static [(&str, &str)]| {
            let chain = chain.clone();
            async move {
                let h = headers(pairs);
                match chain.check(&Presented { headers: &h, peer: None }).await {
                    Ok(Checked::Identified(id)) => Ok(id.name.to_string()),
                    Ok(Checked::Pending(_)) => Ok("pending".into()),
                    Err(e) => Err(e.label()),
                }
            }
        };
        assert_eq!(check(&[("authorization", "Bearer token-a")]).await, Ok("alertmanager".into()));
        assert_eq!(check(&[("authorization", "Basic b3BzOnB3")]).await, Ok("ops".into())); // ops:pw
        assert_eq!(check(&[("authorization", "Basic b3BzOm5v")]).await, Err("auth_rejected")); // ops:no
        assert_eq!(check(&[("authorization", "Bearer token-b")]).await, Err("auth_rejected"));
        assert_eq!(check(&[]).await, Err("auth_missing"));
    }
}
