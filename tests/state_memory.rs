//! The embedded store against the shared conformance suite.

#[path = "support/conformance.rs"]
mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use tidegate::clock::Clock;
use tidegate::state::memory::MemoryStore;
use tidegate::state::{StateStore, StormRules};

async fn memory_store(window: Duration) -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new(10_000, window, StormRules::default(), Clock::System))
}

conformance_suite!(memory_store);
