//! Kubernetes service-account tokens: `Authorization: Bearer <token>`, checked by
//! the API server with a TokenReview (for the configured audiences), then a
//! SubjectAccessReview of the token's user on a configurable verb and resource.
//!
//! Answers are cached under a SHA-256 of the token (never the token), in a bounded
//! cache: an allowed sender for at most 60 s, a denied or unknown token for at
//! most 5 s, so a revoked token stops working within a minute and a fixed RBAC
//! binding starts working within seconds. When the API server cannot answer, the
//! sender is told to retry (503), never that its token is bad: a control-plane
//! outage must not drop alerts.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;
use kube::Api;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cache::{self, TtlCache};
use super::{AuthError, Identity, Rejection, Step};

/// The longest an answer may be cached.
pub const MAX_ALLOWED_TTL: Duration = Duration::from_secs(60);
pub const MAX_DENIED_TTL: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Audiences the token must have been issued for (the `audience` of a projected
    /// service-account token). Empty: the API server's own audiences.
    pub audiences: Vec<String>,
    /// What the token's user must be allowed to do, checked with a
    /// SubjectAccessReview. The resource need not exist: RBAC can grant a verb on
    /// any name, so granting it gives a sender no power in the cluster.
    pub authorization: AccessCheck,
    /// Most tokens whose answers are cached.
    pub cache_size: usize,
    /// How long an allowed token's answer is cached (at most 60 s).
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub allowed_ttl: Duration,
    /// How long a denied or unknown token's answer is cached (at most 5 s).
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub denied_ttl: Duration,
    /// How long a review may take before the sender is told to retry.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            audiences: vec!["tidegate".into()],
            authorization: AccessCheck::default(),
            cache_size: 4096,
            allowed_ttl: MAX_ALLOWED_TTL,
            denied_ttl: MAX_DENIED_TTL,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The resource attributes of the SubjectAccessReview.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccessCheck {
    pub verb: String,
    /// API group of the resource.
    pub group: String,
    pub resource: String,
    /// Namespace of the check; empty for a cluster-wide grant.
    pub namespace: String,
}

impl Default for AccessCheck {
    fn default() -> Self {
        AccessCheck {
            verb: "create".into(),
            group: "remediation.tidegate.dev".into(),
            resource: "signals".into(),
            namespace: String::new(),
        }
    }
}

/// Why the API server could not review a token.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the {review} failed: {source}")]
    Api {
        review: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the {review} did not answer within {timeout:?}")]
    Timeout { review: &'static str, timeout: Duration },
    /// The one review that concurrent requests with the same token waited for failed.
    #[error(transparent)]
    Shared(Arc<ReviewError>),
}

/// A cached answer.
#[derive(Clone, Debug)]
enum Answer {
    Allowed(Identity),
    Denied {
        user: String,
        reason: String,
    },
    /// TokenReview did not authenticate the token: its own words.
    Unauthenticated(String),
}

pub struct Reviewer {
    tokens: Api<TokenReview>,
    access: Api<SubjectAccessReview>,
    config: KubernetesConfig,
    label: Arc<str>,
    /// Answers by token; concurrent first requests with one token share one review.
    cache: TtlCache<Answer, Arc<ReviewError>>,
}

/// Why a `kubernetes` authenticator's section cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewerError {
    /// A review is remembered too long: a revoked token or a withdrawn permission
    /// would go on working (or failing) for that long.
    #[error("allowed_ttl may be at most {}s and denied_ttl at most {}s", MAX_ALLOWED_TTL.as_secs(), MAX_DENIED_TTL.as_secs())]
    CachedTooLong,
}

impl Reviewer {
    pub fn new(client: kube::Client, config: &KubernetesConfig, label: Arc<str>) -> Result<Self, ReviewerError> {
        if config.allowed_ttl > MAX_ALLOWED_TTL || config.denied_ttl > MAX_DENIED_TTL {
            return Err(ReviewerError::CachedTooLong);
        }
        Ok(Reviewer {
            tokens: Api::all(client.clone()),
            access: Api::all(client),
            config: config.clone(),
            label,
            cache: TtlCache::new(config.cache_size),
        })
    }

    pub(super) async fn check(&self, headers: &HeaderMap) -> Result<Step, AuthError> {
        let Some(token) = super::authorization(headers, "Bearer") else { return Ok(Step::Pass(None)) };
        let key = cache::key(token.as_bytes());
        let review = || async {
            let answer = self.review(token).await.map_err(Arc::new)?;
            let ttl = match answer {
                Answer::Allowed(_) => self.config.allowed_ttl,
                _ => self.config.denied_ttl,
            };
            Ok((answer, ttl))
        };
        let answer =
            self.cache.get_or_load(key, review).await.map_err(|e| AuthError::Unavailable(ReviewError::Shared(e)))?;
        match answer {
            Answer::Allowed(identity) => Ok(Step::Identified(identity)),
            Answer::Denied { user, reason } => Err(AuthError::Forbidden { name: user, reason }),
            Answer::Unauthenticated(why) => Ok(Step::Pass(Some(Rejection::NotAuthenticated(why)))),
        }
    }

    async fn review(&self, token: &str) -> Result<Answer, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: (!self.config.audiences.is_empty()).then(|| self.config.audiences.clone()),
            },
            ..Default::default()
        };
        let reviewed = self.call("TokenReview", self.tokens.create(&PostParams::default(), &review)).await?;
        let status = reviewed.status.unwrap_or_default();
        let audience_ok = self.config.audiences.is_empty()
            || status.audiences.iter().flatten().any(|a| self.config.audiences.contains(a));
        let user = match (status.authenticated, status.user) {
            (Some(true), Some(user)) if audience_ok => user,
            (Some(true), _) => return Ok(Answer::Unauthenticated("the token is not for an accepted audience".into())),
            _ => {
                let why = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
                return Ok(Answer::Unauthenticated(why));
            }
        };
        let check = &self.config.authorization;
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(check.verb.clone()),
                    group: Some(check.group.clone()),
                    resource: Some(check.resource.clone()),
                    namespace: (!check.namespace.is_empty()).then(|| check.namespace.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = self.call("SubjectAccessReview", self.access.create(&PostParams::default(), &access)).await?;
        let status = decided.status.unwrap_or_default();
        let name = user.username.unwrap_or_default();
        if status.allowed {
            return Ok(Answer::Allowed(Identity::new(name, self.label.clone(), "kubernetes")));
        }
        let target = format!("{} {}.{}", check.verb, check.resource, check.group);
        let reason = match status.reason.filter(|r| !r.is_empty()) {
            Some(reason) => format!("may not {target}: {reason}"),
            None => format!("may not {target}"),
        };
        Ok(Answer::Denied { user: name, reason })
    }

    async fn call<T>(
        &self,
        review: &'static str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, ReviewError> {
        match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(source)) => Err(ReviewError::Api { review, source }),
            Err(_) => Err(ReviewError::Timeout { review, timeout: self.config.timeout }),
        }
    }
}
