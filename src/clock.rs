//! Wall-clock time, injectable.
//!
//! Every time-dependent decision (dedup windows, first/last seen, the epoch in a
//! RemediationRequest name) reads the time from a [`Clock`] that is passed in, never
//! from `SystemTime::now()` directly. Production uses [`Clock::System`]; tests use a
//! [`Clock::manual`] clock and move it forward explicitly, so window expiry is tested
//! without sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, in milliseconds since the Unix epoch.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// The operating system's clock. Replicas sharing Redis compare timestamps
    /// written by each other, so their clocks must be NTP-synchronised.
    #[default]
    System,
    /// A clock that only moves when told to.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: SystemTime) -> Self {
        let ms = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        Clock::Manual(Arc::new(AtomicU64::new(ms)))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64,
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    /// Whole seconds since the Unix epoch: the resolution of dedup state, which
    /// matches the resolution of Kubernetes timestamps.
    pub fn now_s(&self) -> u32 {
        (self.now_ms() / 1000) as u32
    }

    /// Moves a manual clock forward. A no-op on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!(clock.now_s(), 1_700_000_000);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now_ms(), 1_700_000_001_500);
        assert_eq!(clock.now_s(), 1_700_000_001);
    }
}
