//! The poller: what the cluster held, and when

use super::*;

/// Each request's count as listed over time: name → (when, count) at each change;
/// and its tallies, by the process that wrote them (the first 8 hex digits of the
/// writer id), at each change.
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) series: HashMap<String, Vec<(Instant, u64)>>,
    pub(crate) tallies: HashMap<String, Vec<(Instant, ByProcess)>>,
}

/// Counts by the writing process's half of the writer id.
pub(crate) type ByProcess = BTreeMap<String, u64>;

/// A request's tallies summed by writing process.
pub(crate) fn tallies_of(rr: &RemediationRequest) -> ByProcess {
    let mut by_process = BTreeMap::new();
    let tallies = rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map(|d| d.tallies.as_slice());
    for t in tallies.unwrap_or_default() {
        *by_process.entry(t.writer.chars().take(8).collect()).or_default() += t.count;
    }
    by_process
}

pub(crate) fn count_of(rr: &RemediationRequest) -> u64 {
    rr.status.as_ref().and_then(|s| s.deduplication.as_ref()).map_or(0, |d| d.occurrence_count)
}

pub(crate) async fn poller(api: Api<RemediationRequest>, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(list) = api.list(&ListParams::default()).await {
            let now = Instant::now();
            let mut seen = lock(&seen);
            for rr in &list.items {
                let series = seen.series.entry(rr.name_any()).or_default();
                let count = count_of(rr);
                if series.last().is_none_or(|&(_, last)| last != count) {
                    series.push((now, count));
                }
                let tallies = tallies_of(rr);
                let series = seen.tallies.entry(rr.name_any()).or_default();
                if series.last().is_none_or(|(_, last)| *last != tallies) {
                    series.push((now, tallies));
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Seen {
    /// What `process` had counted on `name` when last listed at or before `at`.
    pub(crate) fn landed(&self, name: &str, process: &str, at: Instant) -> u64 {
        let listed = self.tallies.get(name).and_then(|s| s.iter().rev().find(|(t, _)| *t <= at));
        listed.and_then(|(_, tallies)| tallies.get(process)).copied().unwrap_or(0)
    }
}
