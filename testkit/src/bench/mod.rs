//! The benches' helpers: their settings from the environment, the alerts they send,
//! and what they measure (CPU time, resident memory) of themselves and of the
//! servers they start.

pub mod alerts;
pub mod cpu;
pub mod knobs;
pub mod proc;
pub mod rss;
pub mod scopes;
