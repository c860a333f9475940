//! tidegate: an alert-ingestion gateway for Kubernetes remediation.
//!
//! Signals come in over HTTP ([`http`]) from every source in the source table
//! ([`ingest::SOURCES`]: Alertmanager webhooks and its v2 API, Kubernetes Events,
//! Grafana alerts, CloudEvents), are normalised into [`signal::Signal`]s by
//! [`ingest`], decided by the [`pipeline`] against shared [`state`], and written out
//! as RemediationRequests by a [`sink`]. [`auth`] decides who may submit.
//! [`gateway`] wires these together from one [`config::Config`], each component
//! building itself from its own settings. docs/architecture.md has the map.

pub mod allocator;
pub mod audit;
pub mod auth;
pub mod capacity;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod doctor;
pub mod gateway;
pub mod http;
pub mod ingest;
pub mod kube_api;
pub mod matcher;
pub mod pipeline;
pub mod remediation;
pub mod section;
pub mod signal;
pub mod silence;
pub mod sink;
pub mod state;
pub mod telemetry;
pub mod tree_watch;
pub mod watched;
pub mod workload;
