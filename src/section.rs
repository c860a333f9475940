//! What every configuration section is written with: the error that names the
//! key at fault, and durations as people write them (`5m`, `250ms`).
//!
//! The one module every layer may import upwards, so it must never import anything
//! from the crate: a section's type lives beside the component that reads it, and
//! only needs these two things from the configuration as a whole.

use std::path::PathBuf;
use std::time::Duration;

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: serde_norway::Error },
    /// A value of the file or of a variable that does not fit its key.
    #[error("{at}: {source}")]
    Value { at: String, source: serde_json::Error },
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// A section's own check refused it, for the reason its typed error gives.
    #[error("{key}: {source}")]
    Refused {
        key: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ConfigError {
    pub fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key, reason: reason.into() }
    }

    /// `key` refused by a section's own check, keeping its error as the source.
    pub fn refused(key: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        ConfigError::Refused { key, source: Box::new(source) }
    }
}

/// A duration that is not one.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    #[error("invalid duration {text:?}: {source}")]
    Unreadable {
        text: String,
        #[source]
        source: jiff::Error,
    },
    #[error("invalid duration {0:?}: must not be negative")]
    Negative(String),
}

/// Parses durations written as `5m`, `1s`, `250ms`, `1h 30m` or ISO 8601 `PT5M`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let d: jiff::SignedDuration =
        s.parse().map_err(|source| DurationError::Unreadable { text: s.to_string(), source })?;
    Duration::try_from(d).map_err(|_| DurationError::Negative(s.to_string()))
}

/// `#[serde(with = "crate::section::duration")]`: a duration as people write it,
/// `5m` or `250ms`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(de)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }

    /// In the largest unit that writes it exactly.
    pub fn serialize<S: Serializer>(d: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        match (secs, nanos) {
            (0, 0) => ser.serialize_str("0s"),
            (s, 0) if s % 3600 == 0 => ser.collect_str(&format_args!("{}h", s / 3600)),
            (s, 0) if s % 60 == 0 => ser.collect_str(&format_args!("{}m", s / 60)),
            (s, 0) => ser.collect_str(&format_args!("{s}s")),
            _ if nanos % 1_000_000 == 0 => ser.collect_str(&format_args!("{}ms", d.as_millis())),
            _ => ser.collect_str(&format_args!("{}ns", d.as_nanos())),
        }
    }
}

/// `#[serde(with = "crate::section::optional_duration")]`: [`duration`], or nothing.
pub mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
        let s = Option::<String>::deserialize(de)?;
        s.map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom)).transpose()
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, ser: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, ser),
            None => ser.serialize_none(),
        }
    }
}

/// `#[serde(with = "crate::section::duration_map")]`: names to [`duration`]s.
pub mod duration_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(de)?;
        raw.into_iter().map(|(k, v)| Ok((k, super::parse_duration(&v).map_err(serde::de::Error::custom)?))).collect()
    }

    pub fn serialize<S: Serializer>(map: &BTreeMap<String, Duration>, ser: S) -> Result<S::Ok, S::Error> {
        struct Written<'a>(&'a Duration);
        impl serde::Serialize for Written<'_> {
            fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                super::duration::serialize(self.0, ser)
            }
        }
        let mut out = ser.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            out.serialize_entry(k, &Written(v))?;
        }
        out.end()
    }
}
