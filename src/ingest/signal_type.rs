//! Which signal types exist is the source table's to say: reading a
//! [`SignalType`] back (from a stored request) and describing the set (the CRD's
//! `signalType` enum) are implemented here, beside the table, so that
//! [`crate::signal`] never looks up at it.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::Deserialize;

use super::signal_types;
use crate::signal::SignalType;

impl SignalType {
    /// The signal type spelled `name`, if a source in the table produces it.
    pub fn parse(name: &str) -> Option<Self> {
        signal_types().find(|t| t.as_str() == name)
    }
}

impl<'de> Deserialize<'de> for SignalType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <Cow<'de, str>>::deserialize(deserializer)?;
        SignalType::parse(&name).ok_or_else(|| {
            let known: Vec<_> = signal_types().map(SignalType::as_str).collect();
            serde::de::Error::custom(format!("unknown signal type {name:?}, expected one of {known:?}"))
        })
    }
}

impl JsonSchema for SignalType {
    fn schema_name() -> Cow<'static, str> {
        "SignalType".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let known: Vec<_> = signal_types().map(SignalType::as_str).collect();
        schemars::json_schema!({"description": "Where a signal came from.", "type": "string", "enum": known})
    }
}
