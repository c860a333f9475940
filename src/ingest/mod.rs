//! Source adapters: bytes in, [`Signal`]s out.
//!
//! One adapter per source. Adapters parse and validate; they never do I/O, hold
//! state or consult the clock (the receive time is passed in). Every rejection names
//! the JSON path at fault, so a sender can fix its payload without reading our code.

pub mod alertmanager;
pub mod k8s_event;

use serde::Deserialize;

use crate::signal::Signal;

/// Why a payload, or one alert in it, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not JSON of the expected shape.
    #[error("{path}: {reason}")]
    Malformed { path: String, reason: String },
    /// A field is present but its value is unacceptable.
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
    /// A webhook with nothing in it.
    #[error("alerts: must contain at least one alert")]
    NoAlerts,
    /// A Kubernetes event that is not a warning.
    #[error("type: only Warning events become signals, got {0:?}")]
    NotWarning(String),
}

impl IngestError {
    /// The metric label and problem-type slug for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            IngestError::Malformed { .. } => "malformed",
            IngestError::Invalid { .. } => "invalid",
            IngestError::NoAlerts => "no_alerts",
            IngestError::NotWarning(_) => "not_warning",
        }
    }

    fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        IngestError::Invalid { path: path.into(), reason: reason.into() }
    }
}

/// Deserialises JSON, reporting the path of the first error.
fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, IngestError> {
    // Tracking the path costs on every field; only a failed parse needs it.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends " at line L column C"; keep it, it helps with big bodies.
        IngestError::Malformed {
            path: if path == "." { "$".into() } else { format!("$.{path}") },
            reason: inner.to_string(),
        }
    })
}

/// What one payload turned into: a result per alert, in payload order.
pub type Parsed<'a> = Vec<Result<Signal<'a>, IngestError>>;
