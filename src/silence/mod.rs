//! Silences: what people said to leave alone.
//!
//! A [`resource::RemediationSilence`] names, in Alertmanager's matcher syntax, the
//! signals that must open no request between its `startsAt` and `endsAt` (and,
//! with `timeIntervals`, only inside those recurring windows). Silences come from
//! the cluster ([`kube`], a watch) or from a directory of YAML files ([`dir`]); both
//! feed one [`Silences`], whose [`SilenceIndex`] the pipeline asks once per firing
//! signal ([`crate::pipeline`]'s silence step).
//!
//! Tenancy: a silence matches only signals of its own namespace, unless it lives in
//! the control namespace, where it may match any. So Kubernetes RBAC on
//! `remediationsilences` decides who may silence what.
//!
//! The labels matchers see are the signal's own labels plus `alertname` (the
//! signal's name), `namespace` and `severity` as the gateway normalised them.
//!
//! Lookup is never a scan of all silences: each silence is indexed under its
//! namespace (or as any-namespace) and one of its equality matchers, as
//! Alertmanager looks silences up; only silences with no equality matcher at all
//! are checked for every signal of their namespace. Nothing here does I/O on the
//! signal path, and a silence that cannot be understood is ignored with a reason in
//! its status, never half applied.

pub mod dir;
pub mod interval;
pub mod kube;
pub mod resource;
pub mod status;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::matcher::{Matcher, MatcherError};
use crate::section::ConfigError;
use crate::signal::Signal;
use interval::{IntervalError, TimeInterval};
use resource::{RemediationSilence, RemediationSilenceSpec, RemediationSilenceStatus, MAX_DURATION_DAYS};

/// `silence`: where silences are read and how long one may last.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SilenceConfig {
    /// Whether silences are read at all.
    pub enabled: bool,
    /// With the directory sink: the directory of silence files
    /// (`<dir>/<namespace>/<name>.yaml`). Unset: `_silences` in the sink's directory
    /// (no namespace can be named so, and the sink reads no deeper than its
    /// namespaces' files).
    pub dir: Option<std::path::PathBuf>,
    /// The longest silence this gateway honours, at most 30 days (the CRD's own
    /// limit). A longer one is refused by `tidegate silence add` and ignored by the
    /// gateway, which says so in its status (`state: ignored` and the reason), its log
    /// and `tidegate_silences_ignored_total`.
    #[serde(with = "crate::section::duration")]
    #[schemars(with = "String")]
    pub max_duration: Duration,
}

impl Default for SilenceConfig {
    fn default() -> Self {
        SilenceConfig { enabled: true, dir: None, max_duration: max_duration() }
    }
}

fn max_duration() -> Duration {
    Duration::from_secs(u64::from(MAX_DURATION_DAYS) * 86_400)
}

impl SilenceConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_duration.is_zero() || self.max_duration > max_duration() {
            return Err(ConfigError::invalid("silence.max_duration", "must be more than 0 and at most 30d"));
        }
        Ok(())
    }
}

/// Where a silence lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SilenceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for SilenceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a silence is ignored.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("matcher {matcher:?}: {source}")]
    Matcher {
        matcher: String,
        #[source]
        source: MatcherError,
    },
    #[error(transparent)]
    Interval(#[from] IntervalError),
    #[error("every matcher matches the empty value, so the silence would match every signal")]
    MatchesEverything,
    #[error("it lasts {lasts}, longer than this gateway's silence.max_duration of {max}")]
    TooLong { lasts: String, max: String },
    #[error("endsAt is before startsAt")]
    EndsBeforeStart,
}

impl SilenceError {
    /// The metric label for this error.
    pub fn cause(&self) -> &'static str {
        match self {
            SilenceError::Matcher { .. } => "matcher",
            SilenceError::Interval(_) => "time_interval",
            SilenceError::MatchesEverything => "matches_everything",
            SilenceError::TooLong { .. } => "too_long",
            SilenceError::EndsBeforeStart => "ends_before_start",
        }
    }
}

/// What a silence is at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Before `startsAt`, or between its time intervals.
    Pending,
    Active,
    /// At or after `endsAt`.
    Expired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Active => "active",
            State::Expired => "expired",
        }
    }
}

/// The rules a gateway applies to every silence it loads.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Silences here may match any namespace.
    pub control_namespace: Option<String>,
    pub max_duration: Duration,
}

/// A silence understood, ready to be matched.
#[derive(Debug)]
pub struct Silence {
    pub at: SilenceRef,
    matchers: Vec<Matcher>,
    pub starts_at: Timestamp,
    pub ends_at: Timestamp,
    intervals: Vec<TimeInterval>,
    /// In the control namespace: matches signals of every namespace.
    any_namespace: bool,
}

impl Silence {
    pub fn compile(at: SilenceRef, spec: &RemediationSilenceSpec, rules: &Rules) -> Result<Silence, SilenceError> {
        let matchers = spec
            .matchers
            .iter()
            .map(|m| m.parse().map_err(|source| SilenceError::Matcher { matcher: m.clone(), source }))
            .collect::<Result<Vec<Matcher>, _>>()?;
        // As Alertmanager refuses: a silence must say what it is about.
        if matchers.iter().all(|m| m.matches(None)) {
            return Err(SilenceError::MatchesEverything);
        }
        let intervals = spec.time_intervals.iter().map(TimeInterval::parse).collect::<Result<_, _>>()?;
        let (starts_at, ends_at) = (spec.starts_at.0, spec.ends_at.0);
        if ends_at < starts_at {
            return Err(SilenceError::EndsBeforeStart);
        }
        let lasts = ends_at.duration_since(starts_at);
        if lasts.as_secs() as u64 > rules.max_duration.as_secs() {
            return Err(SilenceError::TooLong {
                lasts: format!("{lasts:#}"),
                max: format!("{:#}", jiff::SignedDuration::try_from(rules.max_duration).unwrap_or_default()),
            });
        }
        let any_namespace = rules.control_namespace.as_deref() == Some(at.namespace.as_str());
        Ok(Silence { at, matchers, starts_at, ends_at, intervals, any_namespace })
    }

    pub fn state(&self, now: Timestamp) -> State {
        if now >= self.ends_at {
            State::Expired
        } else if now < self.starts_at || !(self.intervals.is_empty() || self.intervals.iter().any(|i| i.contains(now)))
        {
            State::Pending
        } else {
            State::Active
        }
    }

    pub fn matchers(&self) -> &[Matcher] {
        &self.matchers
    }

    /// Whether this silence, active or not, covers `signal`: its namespace and every
    /// matcher.
    pub fn covers(&self, signal: &Signal<'_>) -> bool {
        (self.any_namespace || self.at.namespace == signal.namespace)
            && self.matchers.iter().all(|m| m.matches(label(signal, m.name())))
    }

    /// The equality matcher this silence is indexed under: the first on a label
    /// other than `namespace` (already the index's first key), else the first. Never
    /// one on the empty value: `foo=""` matches signals without `foo`, which have no
    /// value of `foo` to be looked up by.
    fn index_key(&self) -> Option<(&str, &str)> {
        let equal = || {
            self.matchers
                .iter()
                .filter_map(|m| Some((m.name(), m.equal_value()?)))
                .filter(|(_, value)| !value.is_empty())
        };
        equal().find(|(name, _)| *name != "namespace").or_else(|| equal().next())
    }
}

/// A label of `signal` as matchers see it.
pub fn label<'a>(signal: &'a Signal<'_>, name: &str) -> Option<&'a str> {
    match name {
        "alertname" => Some(&signal.name),
        "namespace" => Some(&signal.namespace),
        "severity" => Some(&signal.severity),
        _ => signal.labels.get(name),
    }
}

/// Silences by namespace, then by one equality matcher.
#[derive(Debug, Default)]
pub struct SilenceIndex {
    namespaced: HashMap<String, Scope>,
    /// Silences of the control namespace, which match any namespace.
    any_namespace: Scope,
    len: usize,
}

#[derive(Debug, Default)]
struct Scope {
    /// label name → value → silences with that equality matcher.
    by_label: HashMap<String, HashMap<String, Vec<Arc<Silence>>>>,
    /// Silences with no equality matcher: checked for every signal of the scope.
    unindexed: Vec<Arc<Silence>>,
}

impl SilenceIndex {
    pub fn build(silences: impl IntoIterator<Item = Arc<Silence>>) -> Self {
        let mut index = SilenceIndex::default();
        for silence in silences {
            let scope = match silence.any_namespace {
                true => &mut index.any_namespace,
                false => index.namespaced.entry(silence.at.namespace.clone()).or_default(),
            };
            match silence.index_key() {
                Some((name, value)) => {
                    let (name, value) = (name.to_string(), value.to_string());
                    scope.by_label.entry(name).or_default().entry(value).or_default().push(silence);
                }
                None => scope.unindexed.push(silence),
            }
            index.len += 1;
        }
        index
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The active silence covering `signal` at `now`, if any; of several, the one
    /// ending last, so that what the sender is told stays true longest.
    pub fn find<'a>(&'a self, signal: &Signal<'_>, now: Timestamp) -> Option<&'a Arc<Silence>> {
        let mut best: Option<&Arc<Silence>> = None;
        let mut consider = |s: &'a Arc<Silence>| {
            if best.is_none_or(|b| s.ends_at > b.ends_at) && s.state(now) == State::Active && s.covers(signal) {
                best = Some(s);
            }
        };
        for scope in [self.namespaced.get(signal.namespace.as_ref()), Some(&self.any_namespace)] {
            let Some(scope) = scope else { continue };
            scope.unindexed.iter().for_each(&mut consider);
            if scope.by_label.is_empty() {
                continue;
            }
            let derived =
                [("alertname", &*signal.name), ("namespace", &*signal.namespace), ("severity", &*signal.severity)];
            let own = signal.labels.names().filter_map(|n| Some((n, signal.labels.get(n)?)));
            for (name, value) in derived.into_iter().chain(own) {
                if let Some(silences) = scope.by_label.get(name).and_then(|values| values.get(value)) {
                    silences.iter().for_each(&mut consider);
                }
            }
        }
        best
    }
}

/// The silences a gateway knows: every one its source holds, understood or not
/// (the catalog, which the status keeper walks), and the index of those it
/// honours, rebuilt whole on every change (changes are rare) and read per signal
/// under one uncontended read lock.
pub struct Silences {
    rules: Rules,
    catalog: Mutex<BTreeMap<SilenceRef, Known>>,
    index: RwLock<Arc<SilenceIndex>>,
    /// Silences ended by this second (Unix) are left out of the index: expired ones
    /// would otherwise pile up in its buckets until deleted.
    ended_by_s: std::sync::atomic::AtomicI64,
}

/// One silence as its source holds it.
#[derive(Clone, Debug)]
pub struct Known {
    pub silence: Result<Arc<Silence>, Arc<SilenceError>>,
    /// The spec it was understood from: a change of status alone (the gateway's own
    /// writes, echoed by the watch) changes nothing else.
    spec: Arc<RemediationSilenceSpec>,
    /// What its status says now.
    pub status: RemediationSilenceStatus,
    /// Its object's uid, where the source has one (the cluster): what an event
    /// about it names.
    pub uid: Option<String>,
}

impl Known {
    /// Names the version of the silence's spec: the same for every replica and
    /// restart, another once the spec changes (its `endsAt` moved).
    pub fn version(&self) -> String {
        use sha2::Digest;
        let spec = serde_json::to_vec(&*self.spec).unwrap_or_default();
        hex::encode(&sha2::Sha256::digest(&spec)[..8])
    }
}

impl Silences {
    pub fn new(rules: Rules) -> Arc<Self> {
        Arc::new(Silences {
            rules,
            catalog: Mutex::default(),
            index: RwLock::default(),
            ended_by_s: std::sync::atomic::AtomicI64::new(i64::MIN),
        })
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The index to look signals up in.
    pub fn current(&self) -> Arc<SilenceIndex> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every silence known, understood or not.
    pub fn known(&self) -> Vec<(SilenceRef, Known)> {
        self.lock().iter().map(|(at, k)| (at.clone(), k.clone())).collect()
    }

    /// The silence at `at`, if it is known and understood.
    pub fn get(&self, at: &SilenceRef) -> Option<Arc<Silence>> {
        self.lock().get(at)?.silence.as_ref().ok().cloned()
    }

    /// Adds or replaces the silence `object` from the source.
    pub fn upsert(&self, object: &RemediationSilence) {
        let mut catalog = self.lock();
        if self.put(&mut catalog, object) {
            self.reindex(&catalog);
        }
    }

    /// Forgets the silence at `at`: deleted from the source.
    pub fn remove(&self, at: &SilenceRef) {
        let mut catalog = self.lock();
        if catalog.remove(at).is_some() {
            self.reindex(&catalog);
        }
    }

    /// Replaces every silence with `objects`: the source listed them all again.
    pub fn replace_all<'a>(&self, objects: impl IntoIterator<Item = &'a RemediationSilence>) {
        let mut catalog = self.lock();
        catalog.clear();
        for object in objects {
            self.put(&mut catalog, object);
        }
        self.reindex(&catalog);
    }

    /// Puts `object` in the catalog; whether the index must be rebuilt (its spec is
    /// new or changed).
    fn put(&self, catalog: &mut BTreeMap<SilenceRef, Known>, object: &RemediationSilence) -> bool {
        let Some(at) = reference(object) else { return false };
        let status = object.status.clone().unwrap_or_default();
        if let Some(known) = catalog.get_mut(&at).filter(|k| *k.spec == object.spec) {
            known.status = status;
            return false;
        }
        let silence = Silence::compile(at.clone(), &object.spec, &self.rules).map(Arc::new).map_err(Arc::new);
        let uid = object.metadata.uid.clone();
        catalog.insert(at, Known { silence, spec: Arc::new(object.spec.clone()), status, uid });
        true
    }

    /// The second by which ended silences are left out of the index.
    pub fn pruned_by(&self) -> i64 {
        self.ended_by_s.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Leaves silences ended by `now` out of the index from now on.
    pub fn prune(&self, now: Timestamp) {
        self.ended_by_s.store(now.as_second(), std::sync::atomic::Ordering::Relaxed);
        let catalog = self.lock();
        self.reindex(&catalog);
    }

    fn reindex(&self, catalog: &BTreeMap<SilenceRef, Known>) {
        let ended_by = self.ended_by_s.load(std::sync::atomic::Ordering::Relaxed);
        let live =
            catalog.values().filter_map(|k| k.silence.as_ref().ok().filter(|s| s.ends_at.as_second() > ended_by));
        let index = SilenceIndex::build(live.cloned());
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SilenceRef, Known>> {
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a silence object lives; `None` for one without a name.
pub fn reference(object: &RemediationSilence) -> Option<SilenceRef> {
    Some(SilenceRef {
        namespace: object.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        name: object.metadata.name.clone()?,
    })
}

/// Why silences cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot use silence directory {path}: {source}")]
    Dir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch silence directory {path}: {source}")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
}

/// The silences a running gateway honours, and what keeps them.
pub struct Running {
    pub silences: Arc<Silences>,
    /// Counts and states for their statuses, which the pipeline's status writer
    /// writes (`Pipeline::with_silences`).
    pub keeper: status::SilenceKeeper,
    /// The directory watch, when silences are files; stops when dropped.
    _watcher: Option<crate::tree_watch::TreeWatch>,
}

/// The silence directory within the sink's, unless `silence.dir` says otherwise.
pub const DEFAULT_DIR: &str = "_silences";

/// What silences are built from: their own section and what they share with others.
#[derive(Clone, Debug)]
pub struct Settings {
    pub silence: SilenceConfig,
    /// Where silence files are: set with the directory sink, `None` with the cluster.
    pub dir: Option<std::path::PathBuf>,
    /// `placement.control_namespace`: silences there match any namespace.
    pub control_namespace: Option<String>,
    /// `kube.sync_timeout`: how long start-up waits for the first list.
    pub sync_timeout: Duration,
}

impl Settings {
    pub fn rules(&self) -> Rules {
        Rules { control_namespace: self.control_namespace.clone(), max_duration: self.silence.max_duration }
    }
}

/// Where silences are read for a sink writing to `sink_dir` (`None`: the cluster).
pub fn directory(config: &SilenceConfig, sink_dir: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    sink_dir.map(|sink| config.dir.clone().unwrap_or_else(|| sink.join(DEFAULT_DIR)))
}

/// Starts reading silences as `settings` say: `None` when they are disabled, or
/// in kube mode without a client. `client` is the kube sink's client.
pub async fn start(
    settings: &Settings,
    client: Option<::kube::Client>,
    clock: crate::clock::Clock,
    metrics: Arc<crate::telemetry::Metrics>,
) -> Result<Option<Running>, StartError> {
    if !settings.silence.enabled {
        return Ok(None);
    }
    let silences = Silences::new(settings.rules());
    let (store, watcher): (Arc<dyn store::SilenceStore>, _) = match (settings.dir.clone(), client) {
        (Some(path), _) => {
            let shown = path.display().to_string();
            let store = Arc::new(
                dir::DirSilences::new(&path).map_err(|source| StartError::Dir { path: shown.clone(), source })?,
            );
            let watcher =
                dir::watch(path, silences.clone()).map_err(|source| StartError::Watch { path: shown, source })?;
            (Arc::new(store), Some(watcher))
        }
        (None, Some(client)) => {
            kube::watch(client.clone(), silences.clone(), settings.sync_timeout).await;
            (Arc::new(kube::KubeSilences::new(client)), None)
        }
        (None, None) => return Ok(None),
    };
    let keeper = status::SilenceKeeper::new(silences.clone(), store, metrics, clock);
    Ok(Some(Running { silences, keeper, _watcher: watcher }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::signal::TargetResource;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub fn signal(name: &str, namespace: &str, labels: &[(&str, &str)]) -> Signal<'static> {
        let target = TargetResource::new("Pod", "web-1", namespace);
        Signal { severity: "critical".into(), ..crate::signal::test_signal(name, namespace, target, labels) }
    }

    pub fn spec(matchers: &[&str], starts: &str, ends: &str) -> RemediationSilenceSpec {
        RemediationSilenceSpec {
            matchers: matchers.iter().map(|m| m.to_string()).collect(),
            starts_at: Time(starts.parse().unwrap()),
            ends_at: Time(ends.parse().unwrap()),
            comment: "test".into(),
            created_by: None,
            time_intervals: Vec::new(),
        }
    }

    pub fn rules() -> Rules {
        Rules { control_namespace: Some("tidegate".into()), max_duration: max_duration() }
    }

    fn silence(namespace: &str, name: &str, matchers: &[&str]) -> Arc<Silence> {
        let at = SilenceRef { namespace: namespace.into(), name: name.into() };
        let spec = spec(matchers, "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z");
        Arc::new(Silence::compile(at, &spec, &rules()).unwrap())
    }

    const NOON: &str = "2026-12-05T12:00:00Z";

    fn now() -> Timestamp {
        NOON.parse().unwrap()
    }

    #[test]
    fn a_silence_matches_only_signals_of_its_own_namespace() {
        let index = SilenceIndex::build([silence("shop", "drain", &["alertname=KubePodCrashLooping"])]);
        let found = index.find(&signal("KubePodCrashLooping", "shop", &[]), now());
        assert_eq!(found.map(|s| s.at.name.as_str()), Some("drain"));
        assert!(index.find(&signal("KubePodCrashLooping", "bank", &[]), now()).is_none());
    }

    #[test]
    fn a_silence_in_the_control_namespace_matches_every_namespace() {
        let index = SilenceIndex::build([silence("tidegate", "all", &["alertname=~\"Kube.*\""])]);
        assert!(index.find(&signal("KubePodCrashLooping", "shop", &[]), now()).is_some());
        assert!(index.find(&signal("KubeNodeNotReady", "bank", &[]), now()).is_some());
        assert!(index.find(&signal("Watchdog", "bank", &[]), now()).is_none());
    }

    #[test]
    fn matchers_see_the_signals_labels_and_its_name_namespace_and_severity() {
        let index = SilenceIndex::build([silence(
            "shop",
            "s",
            &["pod=~\"web-.*\"", "severity!=\"info\"", "namespace=shop", "alertname=X"],
        )]);
        assert!(index.find(&signal("X", "shop", &[("pod", "web-7")]), now()).is_some());
        assert!(index.find(&signal("X", "shop", &[("pod", "db-7")]), now()).is_none());
        assert!(index.find(&signal("Y", "shop", &[("pod", "web-7")]), now()).is_none());
    }

    #[test]
    fn only_an_active_silence_matches() {
        let index = SilenceIndex::build([silence("shop", "s", &["alertname=X"])]);
        let s = signal("X", "shop", &[]);
        assert!(index.find(&s, "2026-12-04T23:59:59Z".parse().unwrap()).is_none(), "not started");
        assert!(index.find(&s, "2026-12-05T00:00:00Z".parse().unwrap()).is_some(), "from startsAt");
        assert!(index.find(&s, "2026-12-05T23:59:59Z".parse().unwrap()).is_some());
        assert!(index.find(&s, "2026-12-06T00:00:00Z".parse().unwrap()).is_none(), "ended at endsAt");
    }

    #[test]
    fn a_silence_with_time_intervals_is_active_only_inside_them() {
        let mut spec = spec(&["alertname=X"], "2026-12-01T00:00:00Z", "2026-12-20T00:00:00Z");
        spec.time_intervals = vec![serde_norway::from_str(
            "weekdays: [sunday]\ntimes: [{start_time: '02:00', end_time: '04:00'}]\nlocation: Europe/Berlin",
        )
        .unwrap()];
        let at = SilenceRef { namespace: "shop".into(), name: "sundays".into() };
        let silence = Silence::compile(at, &spec, &rules()).unwrap();
        assert_eq!(silence.state("2026-12-06T01:30:00Z".parse().unwrap()), State::Active, "Sunday 02:30 Berlin");
        assert_eq!(silence.state("2026-12-06T03:30:00Z".parse().unwrap()), State::Pending, "Sunday 04:30 Berlin");
        assert_eq!(silence.state("2026-12-20T01:30:00Z".parse().unwrap()), State::Expired);
    }

    #[test]
    fn of_several_silences_the_one_ending_last_is_named() {
        let at = |name: &str| SilenceRef { namespace: "shop".into(), name: name.into() };
        let short = spec(&["alertname=X"], "2026-12-05T00:00:00Z", "2026-12-05T13:00:00Z");
        let long = spec(&["pod=~\"web-.*\""], "2026-12-05T00:00:00Z", "2026-12-05T18:00:00Z");
        let index = SilenceIndex::build([
            Arc::new(Silence::compile(at("short"), &short, &rules()).unwrap()),
            Arc::new(Silence::compile(at("long"), &long, &rules()).unwrap()),
        ]);
        let found = index.find(&signal("X", "shop", &[("pod", "web-1")]), now()).unwrap();
        assert_eq!(found.at.name, "long");
    }

    #[test]
    fn a_silence_on_an_empty_value_covers_signals_without_the_label() {
        // `team=""` matches a signal without `team`, as in Alertmanager; the index
        // must not file the silence where only a `team` label could find it.
        let index = SilenceIndex::build([silence("shop", "untriaged", &[r#"team="""#, r#"alertname=~"Kube.*""#])]);
        assert!(index.find(&signal("KubePodCrashLooping", "shop", &[]), now()).is_some());
        assert!(index.find(&signal("KubePodCrashLooping", "shop", &[("team", "db")]), now()).is_none());
        let both = SilenceIndex::build([silence("shop", "web", &[r#"team="""#, "alertname=KubePodCrashLooping"])]);
        assert!(both.find(&signal("KubePodCrashLooping", "shop", &[]), now()).is_some(), "filed under alertname");
    }

    #[test]
    fn silences_that_cannot_be_honoured_are_refused_with_the_reason() {
        let at = SilenceRef { namespace: "shop".into(), name: "s".into() };
        let compile = |spec: &RemediationSilenceSpec, rules: &Rules| Silence::compile(at.clone(), spec, rules);
        let err = compile(&spec(&["alertname=~(\""], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"), &rules());
        assert_eq!(err.unwrap_err().cause(), "matcher");
        let err = compile(&spec(&["a=~\".*\"", "b!=x"], "2026-12-05T00:00:00Z", "2026-12-06T00:00:00Z"), &rules());
        assert_eq!(err.unwrap_err().cause(), "matches_everything");
        let strict = Rules { max_duration: Duration::from_secs(3600), ..rules() };
        let err = compile(&spec(&["a=b"], "2026-12-05T00:00:00Z", "2026-12-05T02:00:00Z"), &strict).unwrap_err();
        assert_eq!(err.cause(), "too_long");
        assert!(err.to_string().contains("silence.max_duration"), "{err}");
        let err = compile(&spec(&["a=b"], "2026-12-05T02:00:00Z", "2026-12-05T01:00:00Z"), &rules());
        assert_eq!(err.unwrap_err().cause(), "ends_before_start");
    }

    #[test]
    fn silences_are_indexed_by_an_equality_matcher_not_scanned() {
        // A thousand silences in one namespace, each on another alert: a signal is
        // checked against the one indexed under its alertname, and the index says so
        // by where each silence went.
        let silences: Vec<_> =
            (0..1000).map(|i| silence("shop", &format!("s{i}"), &[&format!("alertname=A{i}")])).collect();
        let index = SilenceIndex::build(silences);
        let scope = &index.namespaced["shop"];
        assert!(scope.unindexed.is_empty());
        assert_eq!(scope.by_label["alertname"].len(), 1000);
        assert!(scope.by_label["alertname"].values().all(|v| v.len() == 1));
        assert_eq!(index.find(&signal("A517", "shop", &[]), now()).unwrap().at.name, "s517");
        // A silence keyed on namespace only when it has no other equality matcher.
        let index = SilenceIndex::build([silence("shop", "ns", &["namespace=shop", "pod=~\"web-.*\""])]);
        assert!(index.namespaced["shop"].by_label.contains_key("namespace"));
        assert!(index.find(&signal("Any", "shop", &[("pod", "web-2")]), now()).is_some());
    }
}
