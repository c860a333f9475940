//! Recovery: where the state store and the sink disagree, the sink is right.
//!
//! The store is an accelerator; the sink's requests are the record of open
//! incidents (docs/delivery.md). The store forgets (a restart, a failover, an
//! eviction), and a request ends without the store knowing (a controller finished
//! it, someone deleted it). So before an alert the store calls new gets a request,
//! and before a duplicate is counted on a request the sink lacks, the sink is asked:
//!
//! - a new incident the sink holds open is counted on that request, and the store is
//!   taught it again (`adopt`); likewise an alert of a storm whose window the sink
//!   still holds rejoins it ([`super::storms`]);
//! - a duplicate whose request is finished or deleted starts a new incident;
//! - a duplicate whose request the sink has not seen yet is created, idempotently,
//!   unless this replica is still creating it.
//!
//! The races these rules close were found by the chaos bench (docs/chaos.md); each
//! has a `race_*` unit test in `tests.rs` that fails without its fix. This step never makes a second request for an
//! incident the sink holds open, and never counts an occurrence twice: the store's
//! count only answers the sender, the request's count is the status writers' tallies.

use tracing::Instrument;

use super::{decide_span, incident, Outcome, Pipeline, PipelineError, Slow};
use crate::signal::Signal;
use crate::sink::{Lookup, RequestRef};
use crate::state::{Entry, Observation};

impl Pipeline {
    /// Counts a duplicate on its request, unless the sink says the request is
    /// finished or gone (a new incident starts), or has not seen it yet (it is made).
    pub(super) fn duplicate_now(&self, signal: &Signal<'_>, entry: Entry) -> Result<Outcome, Slow> {
        let at = self.reference(signal, &entry);
        match self.sink.lookup(&at) {
            Lookup::Terminal | Lookup::Deleted => Err(Slow::Reopen),
            Lookup::Missing if !self.status_writer.creating(&incident(signal, &entry)) => Err(Slow::Ensure(entry)),
            Lookup::Open | Lookup::Unknown | Lookup::Missing => Ok(self.duplicate(signal, entry, at)),
        }
    }

    /// A new incident by the store's word: counted on the request or the storm
    /// window the sink holds open for it, if there is one, else its request is made.
    pub(super) async fn open_new(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        entry: Entry,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let now = self.clock.now_s();
        if let Some(outcome) = self.count_on_open(signal, asked, None, now).await? {
            return Ok(outcome);
        }
        // Likewise for a storm whose aggregated request's window is still open: the
        // alert folds into it instead of opening an incident. Only a window opened
        // before this alert was decided: the store folds every alert after a window
        // it knows, so a window it opened in the same second, after deciding this
        // one, is no window it lost, and this alert came before the storm.
        let lost = self.open_window(signal, asked, now).filter(|(_, w)| w.id < entry.first_seen_s);
        if let Some((scope, window)) = lost {
            return self.rejoin(signal, asked, scope, window, now).await;
        }
        self.open(signal, entry, by).await
    }

    /// A duplicate whose request the sink does not have yet. Another replica may be
    /// creating it right now, or may have failed to: the create is idempotent, so
    /// whichever lands first makes the one request, and the other counts this
    /// occurrence on it. Unless the sink holds the incident open in another request:
    /// the store's entry is then one it made after forgetting the incident, a moment
    /// before the alert that found it new counted it on that request (the other
    /// replica's, or this one's, still on its way).
    pub(super) async fn ensure(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        entry: Entry,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let at = self.reference(signal, &entry);
        if let Some(outcome) = self.count_on_open(signal, asked, Some(&at), self.clock.now_s()).await? {
            return Ok(outcome);
        }
        self.open(signal, entry, by).await
    }

    /// A controller finished the request, or it was deleted: this occurrence starts
    /// a new incident.
    pub(super) async fn reopen(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let now = self.clock.now_s();
        let entry = Entry { first_seen_s: now, last_seen_s: now, count: 1 };
        self.state.adopt(asked, entry, now).instrument(decide_span("adopt")).await.inspect_err(|e| self.failed(e))?;
        self.open(signal, entry, by).await
    }

    /// Counts `signal` on the request the sink holds open for its incident, other
    /// than `except`, if there is one: the state store forgot the incident (restart,
    /// failover, eviction), and is taught it again.
    async fn count_on_open(
        &self,
        signal: &Signal<'_>,
        asked: &Observation,
        except: Option<&RequestRef>,
        now: u32,
    ) -> Result<Option<Outcome>, PipelineError> {
        let open = self.sink.open_request(&signal.fingerprint).filter(|o| {
            o.storm.is_none() && now.saturating_sub(o.last_seen_s) < self.window_s && Some(&o.at) != except
        });
        let Some(open) = open else { return Ok(None) };
        // The store's count only answers the sender; the request's count is the
        // writers' tallies, which the store's loss did not touch.
        let count = open.count.min(u32::MAX as u64 - 1) as u32 + 1;
        let entry = Entry { first_seen_s: open.first_seen_s, last_seen_s: now, count };
        self.state.adopt(asked, entry, now).instrument(decide_span("adopt")).await.inspect_err(|e| self.failed(e))?;
        Ok(Some(self.duplicate(signal, entry, open.at)))
    }
}
