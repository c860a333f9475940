//! `tidegate silence add|list|expire`, in the style of `amtool silence`.
//!
//! Each reads the same configuration as `serve` (file, `TIDEGATE_*` variables,
//! flags), so it finds silences where the gateway does: in the cluster with
//! `--sink kube` (the current kubeconfig), else in the silence directory. A
//! silence longer than the configured `silence.max_duration` is refused here, as
//! the gateway would ignore it.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::ServeArgs;
use crate::config::{parse_duration, Config, ConfigError};
use crate::matcher::{MatchOp, Matcher};
use crate::silence::resource::{RemediationSilence, RemediationSilenceSpec};
use crate::silence::store::{SilenceStore, StoreError};
use crate::silence::{Rules, Silence, SilenceRef};

#[derive(Debug, Args)]
pub struct SilenceArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create a silence; prints its name on the last line.
    Add(Box<AddArgs>),
    /// List silences with their state and what they matched.
    List(Box<ListArgs>),
    /// End a silence now.
    Expire(Box<ExpireArgs>),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Alertmanager matchers: `alertname=~"Kube.*"`, `namespace=shop`, `severity!=info`.
    #[arg(required = true)]
    pub matchers: Vec<String>,
    /// How long it lasts from its start, e.g. `2h`.
    #[arg(long = "for", value_parser = parse_duration, conflicts_with = "until")]
    pub duration: Option<Duration>,
    /// When it ends, RFC 3339.
    #[arg(long)]
    pub until: Option<Timestamp>,
    /// When it starts, RFC 3339; now if not given.
    #[arg(long)]
    pub start: Option<Timestamp>,
    /// Why: the planned work it covers.
    #[arg(long, short = 'c')]
    pub comment: String,
    /// Who asks; `$USER` if not given.
    #[arg(long)]
    pub created_by: Option<String>,
    /// The silence's namespace: it matches only signals of this namespace, unless it
    /// is the control namespace. Default: the value of a `namespace=` matcher, else
    /// the control namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub config: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this namespace's silences; all namespaces if not given.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub config: ServeArgs,
}

#[derive(Debug, Args)]
pub struct ExpireArgs {
    /// The silence's name.
    pub name: String,
    /// Its namespace; the control namespace if not given.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub config: ServeArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot reach the Kubernetes API: {0}")]
    Kube(#[source] ::kube::Error),
}

/// Runs `action`; what it prints.
pub async fn run(action: Action, now: Timestamp) -> Result<String, CliError> {
    match action {
        Action::Add(args) => {
            let config = args.config.load()?;
            let store = open(&config).await?;
            add(store.as_ref(), &config, &args, now).await
        }
        Action::List(args) => {
            let config = args.config.load()?;
            let store = open(&config).await?;
            list(store.as_ref(), &config, args.namespace.as_deref(), now).await
        }
        Action::Expire(args) => {
            let config = args.config.load()?;
            let store = open(&config).await?;
            let namespace = args.namespace.clone().unwrap_or_else(|| control_namespace(&config));
            let at = SilenceRef { namespace, name: args.name.clone() };
            store.expire(&at, now).await?;
            Ok(format!("expired {at}\n"))
        }
    }
}

/// Where `config` keeps silences.
pub async fn open(config: &Config) -> Result<Box<dyn SilenceStore>, CliError> {
    match config.silence_settings().dir {
        None => {
            let client = ::kube::Client::try_default().await.map_err(CliError::Kube)?;
            Ok(Box::new(crate::silence::kube::KubeSilences::new(client)))
        }
        Some(dir) => {
            let store = crate::silence::dir::DirSilences::new(&dir).map_err(StoreError::Io)?;
            Ok(Box::new(Arc::new(store)))
        }
    }
}

fn control_namespace(config: &Config) -> String {
    config.placement.control_namespace.clone().unwrap_or_else(|| "default".into())
}

fn rules(config: &Config) -> Rules {
    config.silence_settings().rules()
}

/// Creates the silence `args` describe; prints its name last.
pub async fn add(
    store: &dyn SilenceStore,
    config: &Config,
    args: &AddArgs,
    now: Timestamp,
) -> Result<String, CliError> {
    let matchers = args
        .matchers
        .iter()
        .map(|m| m.parse::<Matcher>().map_err(|e| CliError::Invalid(format!("{m}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let namespace = args.namespace.clone().unwrap_or_else(|| {
        matchers
            .iter()
            .find(|m| m.name() == "namespace" && m.op() == MatchOp::Equal)
            .map_or_else(|| control_namespace(config), |m| m.value().to_string())
    });
    let starts_at = args.start.unwrap_or(now);
    let ends_at = match (args.duration, args.until) {
        (Some(d), _) => starts_at
            .checked_add(jiff::SignedDuration::try_from(d).map_err(|e| CliError::Invalid(e.to_string()))?)
            .map_err(|e| CliError::Invalid(e.to_string()))?,
        (None, Some(until)) => until,
        (None, None) => return Err(CliError::Invalid("say how long: --for 2h or --until <time>".into())),
    };
    let spec = RemediationSilenceSpec {
        // Written back in the quoted form: unambiguous for every later reader.
        matchers: matchers.iter().map(Matcher::to_string).collect(),
        starts_at: Time(starts_at),
        ends_at: Time(ends_at),
        comment: args.comment.clone(),
        created_by: args.created_by.clone().or_else(|| std::env::var("USER").ok()),
        time_intervals: Vec::new(),
    };
    let name = format!("silence-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let at = SilenceRef { namespace: namespace.clone(), name: name.clone() };
    // The gateway's own checks, so that what it would ignore is refused here.
    Silence::compile(at, &spec, &rules(config)).map_err(|e| CliError::Invalid(format!("refused: {e}")))?;
    let mut silence = RemediationSilence::new(&name, spec);
    silence.metadata.namespace = Some(namespace.clone());
    store.create(&silence).await?;
    Ok(format!("created silence in namespace {namespace}, ending {ends_at}\n{name}\n"))
}

/// A table of silences: namespace, name, state, end, matched, matchers, comment.
pub async fn list(
    store: &dyn SilenceStore,
    config: &Config,
    namespace: Option<&str>,
    now: Timestamp,
) -> Result<String, CliError> {
    let silences = store.list(namespace).await?;
    let rules = rules(config);
    let mut out = String::from("NAMESPACE\tNAME\tSTATE\tENDS\tMATCHED\tMATCHERS\tCOMMENT\n");
    for s in silences {
        let Some(at) = crate::silence::reference(&s) else { continue };
        let state = match Silence::compile(at.clone(), &s.spec, &rules) {
            Ok(silence) => silence.state(now).as_str(),
            Err(_) => "ignored",
        };
        let matched = s.status.as_ref().map_or(0, |st| st.matched_signals);
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            at.namespace,
            at.name,
            state,
            s.spec.ends_at.0,
            matched,
            s.spec.matchers.join(","),
            s.spec.comment
        );
    }
    Ok(out)
}
