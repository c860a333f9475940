//! The embedded store against the shared conformance suite.

#[macro_use]
#[path = "support/conformance.rs"]
mod conformance;
mod support;

use std::sync::Arc;
use std::time::Duration;

use tidegate::clock::Clock;
use tidegate::state::memory::{MemoryConfig, MemoryStore};
use tidegate::state::{StateStore, StormConfig};

async fn memory_store(window: Duration) -> Arc<dyn StateStore> {
    Arc::new(MemoryStore::new(&MemoryConfig { max_entries: 10_000 }, window, &StormConfig::default(), Clock::System))
}

conformance_suite!(memory_store);
