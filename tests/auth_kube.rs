//! Kubernetes service-account tokens, against a real kube-apiserver: TokenReview
//! with audiences, then SubjectAccessReview, as the shipped RBAC lets tidegate's
//! own account ask (`system:auth-delegator`, deploy/rbac.yaml). The gateway's client
//! goes through the fault proxy, which counts the reviews and takes the API server
//! away.

mod support;

use std::time::{Duration, SystemTime};

use axum::http::Method;
use k8s_openapi::api::rbac::v1::PolicyRule;
use tidegate::clock::Clock;
use tidegate::gateway::Overrides;
use tidegate::remediation::SUBMITTED_BY_ANNOTATION;

use support::kube::proxy::{Fault, Matching};
use support::kube::{Kube, SYSTEM_NAMESPACE};
use support::{alert, problem, webhook, Gateway};

const PROMETHEUS: &str = "/api/v1/signals/prometheus";

/// What `deploy/rbac.yaml`'s `tidegate-sender` grants.
fn may_submit() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["remediation.tidegate.dev".into()]),
        resources: Some(vec!["signals".into()]),
        verbs: vec!["create".into()],
        ..PolicyRule::default()
    }]
}

/// A gateway that reviews tokens (audience `tidegate`) through `kube`'s proxy as
/// tidegate's service account, writing requests to a directory.
async fn reviewing(kube: &Kube) -> Gateway {
    let yaml = "authenticators: {k8s: {kubernetes: {audiences: [tidegate]}}}";
    let overrides = Overrides { kube_client: Some(kube.gateway_client()) };
    let tweak = |c: &mut tidegate::config::Config| c.auth = serde_norway::from_str(yaml).unwrap();
    support::start_full(tweak, overrides, Clock::manual(SystemTime::now())).await
}

async fn post(g: &Gateway, token: &str, name: &str) -> reqwest::Response {
    let body = serde_json::to_vec(&webhook(vec![alert(name, "payments", "api-0")])).unwrap();
    g.client
        .post(format!("{}{PROMETHEUS}", g.url))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await
        .unwrap()
}

fn reviews(kube: &Kube) -> (usize, usize) {
    let count = |resource| kube.proxy.count(&Matching::new(Method::POST, resource));
    (count("tokenreviews"), count("subjectaccessreviews"))
}

/// RBAC bindings take effect a moment after they are written: the sender's first
/// answer may be a 403 until then.
async fn until_allowed(g: &Gateway, token: &str) {
    support::eventually_within("the sender's binding to take effect", Duration::from_secs(30), || async {
        // A denial is cached for up to 5 s, so this waits that out too.
        post(g, token, "Warmup").await.status() == 201
    })
    .await;
}

#[tokio::test]
async fn a_token_of_an_account_granted_the_sender_role_names_it_and_is_cached() {
    let kube = Kube::new().await;
    kube.account_with_rules("am", may_submit()).await;
    let token = kube.token_for("am", &["tidegate"]).await;
    let g = reviewing(&kube).await;
    until_allowed(&g, &token).await;
    let account = format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{}", kube.account("am"));
    let request = g.requests().pop().unwrap();
    assert_eq!(request.metadata.annotations.unwrap_or_default()[SUBMITTED_BY_ANNOTATION], account);

    let before = reviews(&kube);
    assert_eq!(post(&g, &token, "Cached").await.status(), 201);
    assert_eq!(reviews(&kube), before, "a cached answer makes no API call");
    assert_eq!(g.metric(r#"tidegate_authenticated_requests_total{sender="k8s",method="kubernetes"}"#).await, 2.0);
}

#[tokio::test]
async fn a_token_for_another_audience_is_401() {
    let kube = Kube::new().await;
    kube.account_with_rules("aud", may_submit()).await;
    let token = kube.token_for("aud", &["https://kubernetes.default.svc"]).await;
    let g = reviewing(&kube).await;
    let answer = problem(post(&g, &token, "Audience").await, 401).await;
    assert_eq!(answer["type"], "https://tidegate.dev/problems/auth-rejected");
    assert!(g.manifests().is_empty());
}

#[tokio::test]
async fn a_token_that_is_not_a_service_account_token_is_401() {
    let kube = Kube::new().await;
    let g = reviewing(&kube).await;
    let answer = post(&g, "not-a-token", "Garbage").await;
    assert_eq!(answer.headers()["www-authenticate"], r#"Bearer realm="tidegate""#);
    problem(answer, 401).await;
}

#[tokio::test]
async fn an_account_without_the_grant_is_403_naming_what_it_may_not_do() {
    let kube = Kube::new().await;
    kube.account_with_rules("denied", vec![]).await;
    let token = kube.token_for("denied", &["tidegate"]).await;
    let g = reviewing(&kube).await;
    let answer = problem(post(&g, &token, "Denied").await, 403).await;
    let detail = answer["detail"].as_str().unwrap();
    assert!(detail.contains("may not create signals.remediation.tidegate.dev"), "{detail}");
    assert!(!detail.contains(&token), "the token in the answer");
    assert!(g.manifests().is_empty());
}

#[tokio::test]
async fn an_unreachable_api_server_is_503_with_retry_after_never_401() {
    let kube = Kube::new().await;
    kube.account_with_rules("down", may_submit()).await;
    let token = kube.token_for("down", &["tidegate"]).await;
    let g = reviewing(&kube).await;
    kube.proxy.set_down(true);
    let answer = post(&g, &token, "Down").await;
    assert!(answer.headers().contains_key("retry-after"));
    let answer = problem(answer, 503).await;
    assert_eq!(answer["type"], "https://tidegate.dev/problems/auth-unavailable");
    kube.proxy.set_down(false);
    until_allowed(&g, &token).await;
}

#[tokio::test]
async fn a_token_of_a_deleted_account_is_401() {
    let kube = Kube::new().await;
    kube.account_with_rules("gone", may_submit()).await;
    let token = kube.token_for("gone", &["tidegate"]).await;
    let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(kube.admin.clone(), SYSTEM_NAMESPACE);
    accounts.delete(&kube.account("gone"), &Default::default()).await.expect("delete the account");
    let g = reviewing(&kube).await;
    support::eventually_within("the deleted account's token to be refused", Duration::from_secs(30), || async {
        post(&g, &token, "Gone").await.status() == 401
    })
    .await;
    assert!(g.manifests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_concurrent_first_requests_with_one_token_cost_one_review() {
    let kube = Kube::new().await;
    kube.account_with_rules("burst", may_submit()).await;
    let token = kube.token_for("burst", &["tidegate"]).await;
    // The binding is in effect once one gateway is allowed; a second gateway's cache
    // has never seen the token.
    until_allowed(&reviewing(&kube).await, &token).await;
    let g = reviewing(&kube).await;
    let before = reviews(&kube);
    // The first review's answer is held back a second: every request arrives while
    // it is under way, however the machine schedules them.
    let first_review = Matching::new(Method::POST, "tokenreviews");
    kube.proxy.fail_next(1, Fault::Delay(Duration::from_secs(1)), first_review);
    let posts = (0..16).map(|n| {
        let (g, token) = (&g, &token);
        async move { post(g, token, &format!("Concurrent{n}")).await.status().as_u16() }
    });
    let codes = futures::future::join_all(posts).await;
    assert_eq!(codes, vec![201; 16]);
    let after = reviews(&kube);
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1), "one TokenReview and one SubjectAccessReview");
}
