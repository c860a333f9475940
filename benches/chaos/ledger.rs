//! The ledger: what the senders know, and nothing tidegate says about itself.

use super::*;

/// One incident: an alert name on a Deployment of the run's namespace.
pub(crate) struct Incident {
    pub(crate) alertname: String,
    pub(crate) deployment: String,
}

impl Incident {
    pub(crate) fn nth(n: usize) -> Incident {
        Incident { alertname: format!("ChaosAlert{:02}", n % 8), deployment: format!("svc-{:03}", n / 8) }
    }
}

/// An alert a replica acknowledged.
#[derive(Clone, Copy)]
pub(crate) struct Ack {
    /// When the attempt was sent: it tells which process answered it, since a
    /// replica's next process starts only after the last one is dead. (When the
    /// answer arrived does not: one written just before a SIGKILL arrives after it.)
    pub(crate) sent: Instant,
    /// When the answer arrived.
    pub(crate) answered: Instant,
    pub(crate) replica: usize,
}

#[derive(Default)]
pub(crate) struct Book {
    /// Each acknowledged alert, in the order the answers arrived.
    pub(crate) acked: Vec<Ack>,
    /// Alerts in attempts not answered 2xx.
    pub(crate) unacked: u64,
    /// Request names the gateways answered for this incident.
    pub(crate) names: BTreeMap<String, u64>,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) notifications: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) answered_5xx: AtomicU64,
    pub(crate) transport_errors: AtomicU64,
    pub(crate) answered_4xx: AtomicU64,
    /// 2xx answers whose result for an alert was neither `created` nor `duplicate`.
    pub(crate) odd_results: AtomicU64,
    pub(crate) alerts_acked: AtomicU64,
    pub(crate) alerts_rejected: AtomicU64,
}

pub(crate) struct Ledger {
    pub(crate) books: Vec<Mutex<Book>>,
    pub(crate) tally: Tally,
    /// A few examples of what went wrong, for the report.
    pub(crate) notes: Mutex<Vec<String>>,
}

impl Ledger {
    pub(crate) fn book(&self, i: usize) -> MutexGuard<'_, Book> {
        self.books[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn note(&self, what: String) {
        let mut notes = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if notes.len() < 20 {
            notes.push(what);
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
