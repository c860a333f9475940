//! How much memory a load needs: `tidegate capacity`.
//!
//! Every figure is a measurement, and names the bench that measured it and the line
//! of that bench's output it comes from. docs/benches/ keeps the output of the runs
//! the figures were taken from, and a test fails when a figure and its recorded line
//! disagree, or when a bench stops printing the line: re-run the bench, record its
//! output, and update the figure.

use std::fmt;

/// One measured cost.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    /// Bytes per unit.
    pub bytes: f64,
    /// The bench that measures it: `cargo bench --bench <bench>`.
    pub bench: &'static str,
    /// The start of the bench's output line that carries it (after leading spaces).
    pub label: &'static str,
}

/// Redis `used_memory` per open incident: the dedup hash entry.
pub const REDIS_INCIDENT: Figure = Figure { bytes: 28.8, bench: "redis_memory", label: "bytes per fingerprint" };
/// Redis `used_memory` per storm scope with an open window: rate counter, pattern
/// HyperLogLog, window hash and its resources.
pub const REDIS_STORM_SCOPE: Figure = Figure { bytes: 998.0, bench: "redis_memory", label: "bytes per storm scope" };
/// Redis `used_memory` per source charged against the rate limit recently.
pub const REDIS_SOURCE: Figure = Figure { bytes: 121.3, bench: "redis_memory", label: "bytes per source" };
/// Resident memory per open incident in the embedded store.
pub const EMBEDDED_INCIDENT: Figure = Figure { bytes: 82.0, bench: "memory", label: "bytes per fingerprint:" };
/// Resident memory per storm scope with an open window in the embedded store.
pub const EMBEDDED_STORM_SCOPE: Figure = Figure { bytes: 404.1, bench: "memory", label: "bytes per storm scope:" };

/// Every figure, for the test that keeps them in step with the benches.
pub const FIGURES: [Figure; 5] =
    [REDIS_INCIDENT, REDIS_STORM_SCOPE, REDIS_SOURCE, EMBEDDED_INCIDENT, EMBEDDED_STORM_SCOPE];

/// An empty Redis, and the buffers of a hundred client connections.
const REDIS_BASE: f64 = 2.0 * MIB;
/// The smallest `maxmemory` worth setting: room for a burst nobody planned for.
const REDIS_FLOOR: u64 = 16 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// A load to plan for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    /// Distinct incidents per `dedup.window`.
    pub incidents: u64,
    /// (namespace, alert name) pairs storming at once.
    pub storm_scopes: u64,
    /// Distinct senders within a rate-limit period.
    pub sources: u64,
}

/// What a load needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    pub load: Load,
    /// Redis `used_memory` at worst: a dedup entry lives until its hash expires, up
    /// to two windows after its last sighting, so twice the incidents are held.
    pub redis_used: f64,
    /// The `maxmemory` to set: twice the worst, rounded up to a power of two, at
    /// least 16 MiB.
    pub redis_maxmemory: u64,
    /// The embedded store's resident memory: entries are purged a window after
    /// their last sighting.
    pub embedded: f64,
}

impl Load {
    pub fn plan(self) -> Plan {
        let n = |count: u64, figure: Figure| count as f64 * figure.bytes;
        let redis_used = REDIS_BASE
            + 2.0 * n(self.incidents, REDIS_INCIDENT)
            + n(self.storm_scopes, REDIS_STORM_SCOPE)
            + n(self.sources, REDIS_SOURCE);
        let redis_maxmemory = ((2.0 * redis_used).ceil() as u64).next_power_of_two().max(REDIS_FLOOR);
        let embedded = n(self.incidents, EMBEDDED_INCIDENT) + n(self.storm_scopes, EMBEDDED_STORM_SCOPE);
        Plan { load: self, redis_used, redis_maxmemory, embedded }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Load { incidents, storm_scopes, sources } = self.load;
        let mib = |bytes: f64| bytes / MIB;
        let line = |f: &mut fmt::Formatter<'_>, count: u64, what: &str, figure: Figure| {
            writeln!(
                f,
                "  {count:>10} {what:<22} × {:>6.1} B  (cargo bench --bench {}: \"{}\")",
                figure.bytes, figure.bench, figure.label
            )
        };
        writeln!(f, "For {incidents} incidents per dedup window, {storm_scopes} storm scopes, {sources} sources:")?;
        writeln!(f)?;
        writeln!(f, "Redis")?;
        writeln!(
            f,
            "  maxmemory {} MiB   (CONFIG SET maxmemory {}; with maxmemory-policy noeviction)",
            self.redis_maxmemory >> 20,
            self.redis_maxmemory
        )?;
        writeln!(f, "  used_memory at worst {:.1} MiB, from:", mib(self.redis_used))?;
        writeln!(f, "  {:>10} base: an empty Redis and 100 client connections", format!("{:.1} MiB", mib(REDIS_BASE)))?;
        line(f, 2 * incidents, "incident entries (2×)", REDIS_INCIDENT)?;
        line(f, storm_scopes, "storm scopes", REDIS_STORM_SCOPE)?;
        line(f, sources, "sources", REDIS_SOURCE)?;
        writeln!(f, "  Host RSS is higher than used_memory by the fragmentation ratio (1.7-2.0 measured).")?;
        writeln!(f)?;
        writeln!(f, "Embedded store (state: memory)")?;
        writeln!(f, "  {:.1} MiB of resident memory, from:", mib(self.embedded))?;
        line(f, incidents, "incidents", EMBEDDED_INCIDENT)?;
        line(f, storm_scopes, "storm scopes", EMBEDDED_STORM_SCOPE)?;
        writeln!(f, "  memory.max_entries must be at least {incidents}.")
    }
}

/// The number a bench printed on the line that starts with `label`, in `output`.
pub fn measured(output: &str, label: &str) -> Option<f64> {
    let rest = output.lines().find_map(|line| line.trim_start().strip_prefix(label))?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures are what the recorded bench runs printed, and the benches still
    /// print those lines.
    #[test]
    fn every_figure_is_the_recorded_output_of_its_bench() {
        let root = env!("CARGO_MANIFEST_DIR");
        for figure in FIGURES {
            let recorded = std::fs::read_to_string(format!("{root}/docs/benches/{}.txt", figure.bench)).unwrap();
            let value = measured(&recorded, figure.label)
                .unwrap_or_else(|| panic!("docs/benches/{}.txt has no line {:?}", figure.bench, figure.label));
            assert_eq!(value, figure.bytes, "{:?}: re-recorded as {value}", figure.label);
            let source = std::fs::read_to_string(format!("{root}/benches/{}.rs", figure.bench)).unwrap();
            assert!(source.contains(figure.label), "benches/{}.rs no longer prints {:?}", figure.bench, figure.label);
        }
    }

    #[test]
    fn the_plan_grows_with_the_load_and_rounds_maxmemory_up() {
        let small = Load { incidents: 10_000, storm_scopes: 0, sources: 10 }.plan();
        assert_eq!(small.redis_maxmemory, 16 << 20, "the floor");
        let large = Load { incidents: 1_000_000, storm_scopes: 1_000, sources: 1_000 }.plan();
        assert!(large.redis_maxmemory.is_power_of_two() && large.redis_maxmemory as f64 >= 2.0 * large.redis_used);
        assert!(large.redis_used > 2.0 * 1_000_000.0 * REDIS_INCIDENT.bytes);
        assert!(
            (large.embedded - 1_000_000.0 * EMBEDDED_INCIDENT.bytes - 1_000.0 * EMBEDDED_STORM_SCOPE.bytes).abs() < 1.0
        );
        let text = large.to_string();
        assert!(text.contains("cargo bench --bench redis_memory: \"bytes per fingerprint\""), "{text}");
    }

    #[test]
    fn measured_reads_the_number_after_the_label() {
        let out =
            "x\n  bytes per fingerprint 28.6 B of used_memory (target <= 48 B)\nbytes per fingerprint: 82.3  (target)";
        assert_eq!(measured(out, "bytes per fingerprint "), Some(28.6));
        assert_eq!(measured(out, "bytes per fingerprint:"), Some(82.3));
        assert_eq!(measured(out, "bytes per source"), None);
    }
}
