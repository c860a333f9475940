//! Storm scopes for the memory benches: `scopes` (namespace, alert name) pairs, each
//! sent one alert more than the default rate threshold, so each opens an aggregation
//! window, exactly as a storm of one alert across a namespace's pods does.

use tidegate::signal::{Fingerprint, SignalStatus, TargetResource};
use tidegate::state::{Observation, StormConfig, StormKey};

/// Alerts per scope: one past `storm.rate_threshold`, so the last one opens a window.
pub fn alerts_per_scope() -> u32 {
    StormConfig::default().rate_threshold + 1
}

/// The alerts of scope `scope`, in the order a storm sends them.
pub fn storm(scope: u64) -> Vec<Observation> {
    let namespace = format!("ns-{scope}");
    (0..alerts_per_scope())
        .map(|pod| {
            let target =
                TargetResource { kind: "Pod".into(), name: format!("web-{pod}"), namespace: namespace.clone() };
            Observation {
                fingerprint: Fingerprint::new("CrashLooping", &namespace, &target),
                status: SignalStatus::Firing,
                storm: Some(StormKey::new(&namespace, "CrashLooping", &target)),
            }
        })
        .collect()
}
