//! What each fuzz target checks, one function per target, over the raw bytes
//! libFuzzer hands it. A broken property panics.
//!
//! Shared, as this one file, by the fuzz targets (`fuzz/fuzz_targets/`, through the
//! `tidegate-fuzz` crate) and by the stable replay test (`tests/fuzz_corpus.rs`),
//! which runs the committed corpus and every fixed crash through the same checks:
//! CI never fuzzes, but it never forgets what fuzzing found.

use arbitrary::{Arbitrary, Unstructured};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use jiff::Timestamp;
use tidegate::config::{parse_duration, Config};
use tidegate::ingest::{self, Adapter, IngestError, Payload, Source, SOURCES};
use tidegate::remediation::{self, Classification, StatusUpdate, MAX_VALUE_BYTES};
use tidegate::signal::Fingerprint;
use tidegate::state::{Decision, Verdict};

/// What a target checks of one input; it panics on a broken property.
pub type Check = fn(&[u8]);

/// Every target: its name (the file in `fuzz/fuzz_targets/` and the folder in
/// `fuzz/corpus/`) and its check. Every source of the table, and the parsers of
/// the rules that decide what becomes of a source's signals ([`RULE_PARSERS`]), are
/// fuzzed by the one target `ingest`; the other targets are parsers of their own.
pub const TARGETS: &[(&str, Check)] = &[
    ("ingest", ingest),
    // Parsers of configuration and state: one entry each (and a file in
    // fuzz_targets/, a [[bin]] in fuzz/Cargo.toml, a folder in fuzz/corpus/).
    ("config", config),
    ("duration", duration),
    ("decide_reply", decide_reply),
    ("request_name", request_name),
    ("auth_headers", auth_headers),
];

/// The parsers of silences and inhibit rules, fuzzed by `ingest` beside the sources
/// whose signals they match: an input is the parser's name, a newline, then what
/// its check takes; each keeps its corpus in `fuzz/corpus/ingest_<name>/`, as a
/// source does.
pub const RULE_PARSERS: &[(&str, Check)] = &[("matcher", matcher), ("time_interval", time_interval)];

/// The committed corpus of a source: `fuzz/corpus/ingest_<name>/`, bodies or
/// requests as [`source`] takes them, without the name [`ingest`] reads first.
pub fn corpus_of(source: &Source) -> String {
    format!("ingest_{}", source.name)
}

/// Every source of the table and every rule parser, each input to the one it
/// names: the input is a source's name (`Source::name`) or a rule parser's, a
/// newline, then what [`source`] or the parser's check takes. An input naming
/// neither checks nothing.
pub fn ingest(data: &[u8]) {
    if let Some((source, rest)) = named(data) {
        self::source(source, rest);
    } else if let Some(((_, check), rest)) = rule_parser(data) {
        check(rest);
    }
}

/// The rule parser an [`ingest`] input names, and the rest of the input.
pub fn rule_parser(data: &[u8]) -> Option<(&'static (&'static str, Check), &[u8])> {
    let newline = data.iter().position(|&b| b == b'\n')?;
    let (name, rest) = (&data[..newline], &data[newline + 1..]);
    Some((RULE_PARSERS.iter().find(|(n, _)| n.as_bytes() == name)?, rest))
}

/// The source an [`ingest`] input names, and the rest of the input.
pub fn named(data: &[u8]) -> Option<(&'static Source, &[u8])> {
    let newline = data.iter().position(|&b| b == b'\n')?;
    let (name, rest) = (&data[..newline], &data[newline + 1..]);
    Some((SOURCES.iter().find(|s| s.name.as_bytes() == name)?, rest))
}

/// Every source, built from the default configuration.
fn adapter(source: &Source) -> &'static Adapter {
    static ADAPTERS: std::sync::LazyLock<Vec<Adapter>> =
        std::sync::LazyLock::new(|| Adapter::all(&ingest::Settings::default()));
    ADAPTERS.iter().find(|a| a.source.route == source.route).expect("every source of the table is built")
}

/// Splits an input into headers and body. An input that starts with `POST ` is a
/// request as a sender writes it (the fixtures' `.http` files): header lines, a
/// blank line, the body; the CloudEvents binary mode lives in its headers. Any
/// other input is a body, sent as the source's first media type (structured mode
/// for CloudEvents).
fn request(source: &Source, data: &[u8]) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    let Some(rest) = data.strip_prefix(b"POST ") else {
        // A CloudEvent's body alone is in structured mode.
        let json = if source.name == "cloudevents" { "application/cloudevents+json" } else { "application/json" };
        headers.insert("content-type", HeaderValue::from_static(json));
        return (headers, data.to_vec());
    };
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let end = end.or_else(|| rest.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (head, body) = match end {
        Some((i, sep)) => (&rest[..i], &rest[i + sep..]),
        None => (rest, &[][..]),
    };
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    (headers, body.to_vec())
}

/// A source's parser, on any body and headers: it never panics, every rejection
/// names a JSON path, parsing is deterministic, every signal carries its source's
/// type and the fingerprint of its own identity (its name, namespace and target,
/// or the key its sender names the incident by in place of the name), and the
/// request built from it is one Kubernetes accepts (name, label values) with every
/// spec value cut to size.
pub fn source(source: &Source, data: &[u8]) {
    let adapter = adapter(source);
    let (headers, body) = request(source, data);
    let received = Timestamp::from_second(1_700_000_000).expect("a valid time");
    let payload = Payload { body: &body, headers: &headers, received };
    let parsed = adapter.parse(&payload);
    let summary = |p: &Result<ingest::Parsed, IngestError>| match p {
        Ok(results) => Ok(results
            .iter()
            .map(|r| r.as_ref().map(|s| (s.fingerprint, s.name.to_string())).map_err(Clone::clone))
            .collect::<Vec<_>>()),
        Err(e) => Err(e.clone()),
    };
    assert_eq!(summary(&parsed), summary(&adapter.parse(&payload)), "parsing is deterministic");
    let results = match parsed {
        Ok(results) => results,
        Err(e) => return assert_names_a_path(&e),
    };
    let class = Classification { environment: "unknown".into(), priority: "P3".into(), rule: "default".into() };
    for result in results {
        let signal = match result {
            Ok(signal) => signal,
            Err(e) => {
                assert_names_a_path(&e);
                continue;
            }
        };
        assert_eq!(signal.signal_type, source.signal_type);
        // The namespace names a Kubernetes namespace and the directory sink's folder.
        assert_dns_label(&signal.namespace);
        let max_labels = ingest::IngestConfig::default().max_labels;
        assert!(signal.labels.len() + signal.annotations.len() <= max_labels);
        assert!(!signal.name.trim().is_empty(), "a signal has a name");
        let identity = match signal.annotations.get(ingest::INCIDENT_KEY) {
            Some(key) => ingest::keyed_fingerprint(signal.signal_type, key),
            None => Fingerprint::new(&signal.name, &signal.namespace, &signal.target),
        };
        assert_eq!(signal.fingerprint, identity);
        let status = StatusUpdate::seen(1, 1);
        let rr = remediation::build(&signal, &signal.namespace, 1_700_000_000, &class, &status);
        assert_dns_label(rr.metadata.name.as_deref().expect("a request has a name"));
        for (key, value) in rr.metadata.labels.iter().flatten() {
            assert!(is_label_value(value), "label {key}={value:?} is not a valid label value");
        }
        let spec = &rr.spec;
        let values = spec.signal_labels.iter().chain(&spec.signal_annotations).flat_map(|(k, v)| [k, v]);
        for value in values.chain([&spec.signal_name, &spec.severity, &spec.signal_source]) {
            assert!(value.len() <= MAX_VALUE_BYTES, "a spec value of {} bytes", value.len());
        }
        assert!(spec.target_resource.name.len() <= 253 && spec.target_resource.kind.len() <= 63);
    }
}

/// Malformed and invalid input is reported where it is, so a sender can fix it: at
/// a JSON path, or, for a CloudEvent in binary mode, at the `ce-` header that
/// carries the attribute (fuzzing found those, rightly, naming the header).
fn assert_names_a_path(e: &IngestError) {
    if let IngestError::Malformed { path, .. } | IngestError::Invalid { path, .. } = e {
        assert!(path.starts_with('$') || path.starts_with("ce-"), "error path {path:?} of {e}");
    }
}

/// A DNS-1123 label (RFC 1123, as Kubernetes checks names): 1 to 63 characters of
/// `[a-z0-9-]`, alphanumeric at both ends. Stricter than the subdomain a custom
/// resource's name must be, so it implies it.
fn assert_dns_label(name: &str) {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = (1..=63).contains(&name.len())
        && name.bytes().all(|c| alnum(c) || c == b'-')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    assert!(ok, "{name:?} is not a DNS-1123 label");
}

/// A Kubernetes label value: empty, or at most 63 characters of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends.
fn is_label_value(v: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|c| alnum(c) || matches!(c, b'-' | b'_' | b'.'))
            && v.bytes().next().is_some_and(alnum)
            && v.bytes().last().is_some_and(alnum))
}

/// The configuration loader, on any YAML: it never panics, and a configuration
/// that validates never has a value silently changed by what the gateway derives
/// from it (durations in whole seconds that fit the state store's u32 seconds,
/// the open horizon, the body budget, the rate limit's GCRA parameters).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // What `Config::from_file` does with a file's text.
    let config = if text.trim().is_empty() { Ok(Config::default()) } else { serde_norway::from_str::<Config>(text) };
    let Ok(config) = config else { return };
    if config.validate().is_err() {
        return;
    }
    let storm = &config.storm;
    for (seconds, d) in [
        (storm.rate_window_s(), storm.rate_window),
        (storm.pattern_window_s(), storm.pattern_window),
        (storm.inactivity_s(), storm.inactivity),
        (storm.max_duration_s(), storm.max_duration),
    ] {
        assert_eq!(u64::from(seconds), d.as_secs(), "{d:?} does not fit the store's seconds");
    }
    assert!(u32::try_from(config.dedup.window.as_secs()).is_ok(), "dedup.window {:?}", config.dedup.window);
    assert!(config.open_horizon() >= config.dedup.window);
    assert!(config.http.body_budget() >= config.http.body_limit as u64);
    if let Some(limit) = config.rate_limit.limit() {
        assert!(limit.emission_interval_ms() >= 1);
        let _ = limit.tolerance_ms();
    }
    let _ = tidegate::pipeline::classify::Classifier::new(&config.classify);
}

/// The duration parser: it never panics, and what it accepts reads back the same
/// when written in its own format.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(d) = parse_duration(text) else { return };
    let written = format!("{:#}", jiff::SignedDuration::try_from(d).expect("a parsed duration fits"));
    assert_eq!(parse_duration(&written).ok(), Some(d), "{text:?} read as {d:?}, written {written:?}");
    let iso = format!("{}", jiff::SignedDuration::try_from(d).expect("a parsed duration fits"));
    assert_eq!(parse_duration(&iso).ok(), Some(d), "{text:?} read as {d:?}, written {iso:?}");
}

/// A reply `decide.lua` might send, good or hostile.
#[derive(Arbitrary, Debug)]
enum Reply {
    /// What the script packs: an admission, then one verdict per member.
    Packed {
        admission: [u32; 2],
        verdicts: Vec<[u32; 6]>,
    },
    Bytes(Vec<u8>),
    Int(i64),
    Nil,
    Array(Vec<Vec<u8>>),
}

impl Reply {
    fn value(&self) -> redis::Value {
        use redis::Value;
        match self {
            Reply::Packed { admission, verdicts } => {
                let words = admission.iter().chain(verdicts.iter().flatten());
                Value::BulkString(words.flat_map(|w| w.to_be_bytes()).collect())
            }
            Reply::Bytes(b) => Value::BulkString(b.clone()),
            Reply::Int(n) => Value::Int(*n),
            Reply::Nil => Value::Nil,
            Reply::Array(items) => Value::Array(items.iter().cloned().map(Value::BulkString).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct DecideReplies {
    /// How many observations each call decides; the batch is all of them, in order.
    calls: Vec<u8>,
    replies: Vec<Reply>,
}

/// `decide.lua`'s packed reply decoder, on any replies: it never panics, a decided
/// batch has exactly one verdict per observation, and a reply packed as the script
/// packs it decodes to the verdicts it carries.
pub fn decide_reply(data: &[u8]) {
    let Ok(input) = DecideReplies::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut members = Vec::new();
    let mut len = 0;
    for &n in input.calls.iter().take(64) {
        members.push((len..len + usize::from(n % 32)).collect::<Vec<_>>());
        len += usize::from(n % 32);
    }
    let values = input.replies.iter().map(Reply::value).collect();
    let decided = tidegate::state::redis::decode(len, members.iter().map(Vec::as_slice), values);
    let well_formed = input.replies.len() == members.len()
        && members.iter().zip(&input.replies).all(|(m, r)| match r {
            Reply::Packed { admission: [1, 0], verdicts } => {
                verdicts.len() == m.len() && verdicts.iter().all(|v| matches!(v[0], 0..=3 | 5..=7))
            }
            _ => false,
        });
    match decided {
        Ok(Decision::Decided(verdicts)) => {
            assert!(well_formed, "decided {verdicts:?} from {input:?}");
            assert_eq!(verdicts.len(), len);
            let packed = members.iter().zip(&input.replies).flat_map(|(_, r)| match r {
                Reply::Packed { verdicts, .. } => verdicts.as_slice(),
                _ => unreachable!("well formed"),
            });
            for (verdict, words) in verdicts.iter().zip(packed) {
                assert_eq!(kind(verdict), words[0], "{verdict:?} from {words:?}");
            }
        }
        Ok(Decision::Limited { .. }) => {
            // A reply that is exactly a limited admission, as packed or as raw bytes.
            let limited =
                |r: &Reply| matches!(r.value(), redis::Value::BulkString(b) if b.len() == 8 && b[..4] == [0; 4]);
            assert!(input.replies.iter().any(limited), "limited by {input:?}");
        }
        Err(_) => assert!(!well_formed, "refused a well-formed reply {input:?}"),
    }
}

/// The verdict code `decide.lua` writes for `v`.
fn kind(v: &Verdict) -> u32 {
    match v {
        Verdict::New(_) => 0,
        Verdict::Duplicate(_) => 1,
        Verdict::ResolvedOpen(_) => 2,
        Verdict::ResolvedUnknown => 3,
        Verdict::Folded(_) => 5,
        Verdict::AcknowledgedOpen(_) => 6,
        Verdict::AcknowledgedUnknown => 7,
        Verdict::Refired { opened, .. } => u32::from(!opened),
    }
}

#[derive(Arbitrary, Debug)]
struct NameInput {
    signal_name: String,
    fingerprint: [u8; 32],
    epoch_s: u32,
    scope: [u8; 16],
}

/// RemediationRequest names, of incidents and of storms: always a DNS-1123 label,
/// always the same for the same input, and different for another occurrence epoch.
pub fn request_name(data: &[u8]) {
    let Ok(input) = NameInput::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let NameInput { signal_name, fingerprint, epoch_s, scope } = &input;
    for name in [
        remediation::request_name(signal_name, fingerprint, *epoch_s),
        remediation::storm_request_name(signal_name, scope, *epoch_s),
    ] {
        assert_dns_label(&name);
    }
    let name = remediation::request_name(signal_name, fingerprint, *epoch_s);
    assert_eq!(name, remediation::request_name(signal_name, fingerprint, *epoch_s));
    assert_eq!(
        remediation::storm_request_name(signal_name, scope, *epoch_s),
        remediation::storm_request_name(signal_name, scope, *epoch_s)
    );
    assert_ne!(name, remediation::request_name(signal_name, fingerprint, epoch_s.wrapping_add(1)));
}

/// A request's credentials, as a sender (or an attacker) might present them. The
/// `sign_*` choices make the fuzzer able to reach the paths behind a valid
/// signature, which it could never guess.
#[derive(Arbitrary, Debug)]
struct Credentials<'a> {
    /// A raw `Authorization` value.
    authorization: Option<&'a str>,
    /// `Basic base64(user:password)`, instead of a raw value.
    basic: Option<(&'a str, &'a str)>,
    webhook_id: Option<&'a str>,
    /// Seconds from now of `webhook-timestamp` (and Grafana's timestamp).
    timestamp_offset_s: Option<i16>,
    /// A raw `webhook-signature` value.
    webhook_signature: Option<&'a str>,
    /// Sign with the configured Standard Webhooks secret, flipping a bit if true.
    sign_webhook: Option<bool>,
    /// A raw Grafana signature header value.
    grafana_signature: Option<&'a str>,
    /// Sign with the configured Grafana secret, flipping a bit if true.
    sign_grafana: Option<bool>,
    body: &'a [u8],
}

/// The configured credentials the auth check knows.
const TOKEN: &str = "fuzz-token-0123456789";
const USER: (&str, &str) = ("oncall", "s3cret");
const WEBHOOK_SECRET: &[u8] = b"fuzz-webhook-secret";
const GRAFANA_SECRET: &str = "fuzz-grafana-secret";
const NOW_S: u64 = 1_700_000_000;

/// One authenticator of each kind a request head or body carries, on one route,
/// with its files in a folder of this process's own.
struct AuthFixture {
    chain: std::sync::Arc<tidegate::auth::Chain>,
    replays: std::sync::Arc<dyn tidegate::state::StateStore>,
    runtime: tokio::runtime::Runtime,
}

fn auth_fixture() -> &'static AuthFixture {
    static FIXTURE: std::sync::OnceLock<AuthFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        use data_encoding::BASE64;
        let dir = std::env::temp_dir().join(format!("tidegate-fuzz-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("a secret file");
            path.display().to_string()
        };
        let (token, webhook, grafana) = (
            write("token", TOKEN),
            write("whsec", &format!("whsec_{}", BASE64.encode(WEBHOOK_SECRET))),
            write("grafana", GRAFANA_SECRET),
        );
        let hash = bcrypt::hash(USER.1, 4).expect("a bcrypt hash");
        let yaml = format!(
            "authenticators:
               token: {{bearer: {{tokens: {{alertmanager: {token}}}}}}}
               users: {{basic: {{users: {{{}: \"{hash}\"}}}}}}
               webhooks: {{standard_webhooks: {{source: falco, secret_file: {webhook}}}}}
               grafana: {{grafana: {{source: grafana, secret_file: {grafana}, timestamp_header: X-Grafana-Alerting-Timestamp}}}}",
            USER.0
        );
        let config: tidegate::auth::AuthConfig = serde_norway::from_str(&yaml).expect("the fixture's auth section");
        use tidegate::auth::kind;
        let kinds = [kind::BEARER, kind::BASIC, kind::STANDARD_WEBHOOKS, kind::GRAFANA];
        let auth = config.build(None, &[("/all", &kinds)]).expect("the fixture's authenticators");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        // The store starts its purge task on the runtime it is made in.
        let replays = {
            let _in_runtime = runtime.enter();
            std::sync::Arc::new(tidegate::state::memory::MemoryStore::new(
                &Default::default(),
                std::time::Duration::from_secs(300),
                &Default::default(),
                tidegate::clock::Clock::System,
            ))
        };
        AuthFixture { chain: auth.chain("/all").expect("a chain"), replays, runtime }
    })
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The authentication header parsers (bearer, basic, Standard Webhooks and Grafana
/// signatures), on any head and body: they never panic, and a request is accepted
/// only with a configured credential: the token, the user's password, or a
/// signature made with the configured secret over this very body. A signed
/// message is accepted once; its replay is refused.
pub fn auth_headers(data: &[u8]) {
    use data_encoding::{BASE64, HEXLOWER};
    use tidegate::auth::{AuthError, Checked, Presented, Verified};
    let Ok(input) = Credentials::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let fixture = auth_fixture();
    let timestamp = (NOW_S as i64 + i64::from(input.timestamp_offset_s.unwrap_or(0))).to_string();
    let id = input.webhook_id.unwrap_or("msg_fuzz");
    let flip = |mut tag: Vec<u8>, corrupt: bool| {
        if corrupt {
            tag[0] ^= 1;
        }
        tag
    };
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some((user, password)) = input.basic {
        pairs.push(("authorization", format!("Basic {}", BASE64.encode(format!("{user}:{password}").as_bytes()))));
    } else if let Some(value) = input.authorization {
        pairs.push(("authorization", value.to_string()));
    }
    if input.webhook_id.is_some() || input.sign_webhook.is_some() {
        pairs.push(("webhook-id", id.to_string()));
        pairs.push(("webhook-timestamp", timestamp.clone()));
    }
    if let Some(corrupt) = input.sign_webhook {
        let tag = hmac_sha256(WEBHOOK_SECRET, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", input.body]);
        pairs.push(("webhook-signature", format!("v1,{}", BASE64.encode(&flip(tag, corrupt)))));
    } else if let Some(value) = input.webhook_signature {
        pairs.push(("webhook-signature", value.to_string()));
    }
    if let Some(corrupt) = input.sign_grafana {
        let tag = hmac_sha256(GRAFANA_SECRET.as_bytes(), &[timestamp.as_bytes(), b":", input.body]);
        pairs.push(("x-grafana-alerting-signature", HEXLOWER.encode(&flip(tag, corrupt))));
        pairs.push(("x-grafana-alerting-timestamp", timestamp.clone()));
    } else if let Some(value) = input.grafana_signature {
        pairs.push(("x-grafana-alerting-signature", value.to_string()));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &pairs {
        // Values no HTTP parser would deliver never reach the authenticators.
        let Ok(value) = HeaderValue::from_str(value) else { return };
        headers.append(HeaderName::from_static(name), value);
    }
    let presented = Presented { headers: &headers, peer: None };
    let checked = fixture.runtime.block_on(fixture.chain.check(&presented));
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    match checked {
        Ok(Checked::Identified(identity)) => match identity.method {
            "bearer" => {
                let (scheme, token) = authorization.and_then(|v| v.split_once(' ')).expect("a bearer header");
                assert!(scheme.eq_ignore_ascii_case("bearer") && token.trim() == TOKEN, "accepted {authorization:?}");
                assert_eq!(&*identity.name, "alertmanager");
            }
            "basic" => {
                assert_eq!(input.basic, Some(USER), "accepted {authorization:?}");
                assert_eq!(&*identity.name, USER.0);
            }
            other => panic!("identified by {other} from {headers:?}"),
        },
        Ok(Checked::Pending(pending)) => {
            let verify = || fixture.runtime.block_on(pending.verify(&headers, input.body, NOW_S, &fixture.replays));
            match verify() {
                Ok(verified) => {
                    let (identity, claim) = match verified {
                        Verified::New(identity, claim) => (identity, claim),
                        // An id an earlier input delivered.
                        Verified::Delivered(identity) => (identity, None),
                    };
                    let signed = match identity.method {
                        "standard_webhooks" => input.sign_webhook == Some(false),
                        "grafana" => input.sign_grafana == Some(false),
                        other => panic!("verified by {other}"),
                    };
                    // A raw value equal to the right signature is a fluke the
                    // fuzzer cannot make; accepting anything else is the bug.
                    assert!(signed, "accepted an unsigned or mis-signed request: {headers:?}");
                    if let Some(claim) = claim {
                        assert!(
                            matches!(verify(), Err(AuthError::InFlight)),
                            "a message being decided was taken twice"
                        );
                        fixture.runtime.block_on(claim.settle(axum::http::StatusCode::OK));
                        assert!(
                            matches!(verify(), Ok(Verified::Delivered(_))),
                            "the retry of a delivered message was decided again"
                        );
                    }
                }
                Err(AuthError::Rejected(_)) => {}
                Err(e) => panic!("verifying against the in-memory replay store: {e}"),
            }
        }
        Err(AuthError::Missing | AuthError::Rejected(_)) => {}
        Err(e) => panic!("no authenticator here can be unavailable: {e}"),
    }
}

/// Alertmanager's matcher parser (silences, inhibition): it never panics, a matcher
/// it accepts writes back (quoted) to one that parses to the same matcher and
/// matches the same values, and a list parses or fails without panicking.
pub fn matcher(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = tidegate::matcher::parse_list(text);
    let Ok(m) = text.parse::<tidegate::matcher::Matcher>() else { return };
    let written = m.to_string();
    let again: tidegate::matcher::Matcher =
        written.parse().unwrap_or_else(|e| panic!("{text:?} parsed, but its written form {written:?} did not: {e}"));
    assert_eq!(again, m, "{text:?} written as {written:?}");
    for value in [None, Some(""), Some(m.value()), Some(text)] {
        assert_eq!(m.matches(value), again.matches(value), "{text:?} on {value:?}");
    }
}

/// Alertmanager's time_intervals parser (maintenance windows), on YAML: it never
/// panics, and an interval it accepts answers for any instant without panicking.
pub fn time_interval(data: &[u8]) {
    use tidegate::silence::interval::{TimeInterval, TimeIntervalSpec};
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = serde_norway::from_str::<TimeIntervalSpec>(text) else { return };
    let Ok(interval) = TimeInterval::parse(&spec) else { return };
    for t in [Timestamp::MIN, Timestamp::UNIX_EPOCH, Timestamp::from_second(1_774_746_000).unwrap(), Timestamp::MAX] {
        let _ = interval.contains(t);
    }
}
