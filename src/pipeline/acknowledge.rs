//! Acknowledgements: a person took an incident on at its sender (PagerDuty's
//! `acknowledge`), and says so.
//!
//! An acknowledgement is not an occurrence. It is recorded on the incident's open
//! request (`status.acknowledgedAt`, through the [`super::status_writer`]), so a
//! controller can see that a person is on it; it counts nothing, never extends the
//! dedup window (the state store only reads for it), never feeds a storm, and never
//! opens a request. One for an incident with no open request is answered as
//! recorded (`acknowledged_unknown` in `tidegate_signals_received_total`): there
//! is nothing for it to change, and a sender retrying it would change nothing.
//!
//! The request is found as a duplicate's is, with one difference: the store's entry
//! names the incident, and the sink (the authority) names where its request lives.
//! An acknowledgement carries no details (PagerDuty's has no payload), so the
//! namespace its own labels give may not be the one its trigger's gave; and where
//! the store lost the incident, the sink still holds its request. This step never
//! writes anything but `acknowledgedAt`.

use super::status_writer::Incident;
use super::{uncounted, Outcome, OutcomeStatus, Pipeline};
use crate::remediation::StatusUpdate;
use crate::signal::Signal;
use crate::sink::OpenRequest;
use crate::state::Entry;

impl Pipeline {
    /// Records an acknowledgement on its incident's open request, if there is one:
    /// the one `entry` stands for, where the store knows the incident, else the one
    /// the sink holds open for it.
    pub(super) fn acknowledge_now(&self, signal: &Signal<'_>, entry: Option<Entry>) -> Outcome {
        let found = match entry {
            // The store's incident, where the sink holds it.
            Some(entry) => Some((self.locate(signal, &entry), entry)),
            // An incident the store forgot, whose request the sink holds open.
            None => self.sink.open_request(&signal.fingerprint).filter(|open| open.storm.is_none()).map(
                |OpenRequest { at, first_seen_s, last_seen_s, count, .. }| {
                    (at, Entry { first_seen_s, last_seen_s, count: count.min(u32::MAX as u64) as u32 })
                },
            ),
        };
        let Some((at, entry)) = found else {
            return self.outcome(signal, OutcomeStatus::Acknowledged { recorded: false }, None, 0);
        };
        let acknowledged = StatusUpdate { acknowledged_at_s: Some(self.clock.now_s()), ..uncounted(&entry) };
        self.status_writer.record(Incident::Signal(signal.fingerprint, entry.first_seen_s), &at, acknowledged);
        self.outcome(signal, OutcomeStatus::Acknowledged { recorded: true }, Some(at), entry.count)
    }
}
