//! Requests: creating a new incident's RemediationRequest, and counting an
//! occurrence on an open one.
//!
//! A request is created before the alert that opened its incident is answered, with
//! its environment and priority ([`super::classify`]), its submitter, and its trace.
//! A create is idempotent (its name is derived from the incident): a request that
//! exists already gets the occurrence counted on it instead. A create that fails is
//! handed to the status writer, which keeps trying, because the store has recorded
//! the incident as open and the sender's retry will be a duplicate of it. Repeats
//! are never written here: they go to the status writer, which writes them at most
//! once per interval.

use tracing::Instrument;

use super::status_writer::Incident;
use super::{incident, uncounted, Outcome, OutcomeStatus, Pipeline, PipelineError};
use crate::audit;
use crate::remediation::{self, RemediationRequest, StatusUpdate};
use crate::signal::Signal;
use crate::sink::{Created, RequestRef, SinkError};
use crate::state::Entry;
use crate::telemetry::{trace, ClassLabels};

impl Pipeline {
    /// Creates the request of a new incident, the next attempt after
    /// `prior_failures` failed ones in a row.
    pub(super) async fn open(
        &self,
        signal: &Signal<'_>,
        entry: Entry,
        prior_failures: u32,
        by: &str,
    ) -> Result<Outcome, PipelineError> {
        let class = self.classify(signal);
        let at = self.reference(signal, &entry);
        let update = uncounted(&entry);
        let mut request = remediation::build(signal, &at.namespace, entry.first_seen_s, &class, &update);
        if prior_failures > 0 {
            let status = request.status.get_or_insert_with(Default::default);
            status.backoff = Some(remediation::Backoff { prior_failures, until: None });
        }
        self.name_trace(&mut request);
        let status = match self.create(incident(signal, &entry), request, &at, update, by).await {
            Ok(Created::Created) => OutcomeStatus::Created,
            Ok(Created::AlreadyExists) => OutcomeStatus::Duplicate,
            Err(e) => {
                self.metrics.signal(signal.signal_type.as_str(), "failed");
                return Err(e.into());
            }
        };
        Ok(self.outcome(signal, status, Some(at), entry.count))
    }

    /// Counts a duplicate on its open request.
    pub(super) fn duplicate(&self, signal: &Signal<'_>, entry: Entry, at: RequestRef) -> Outcome {
        let update = StatusUpdate { silenced_by: self.silence_mark(signal, &at, &entry), ..uncounted(&entry) };
        self.status_writer.repeat(incident(signal, &entry), &at, update);
        self.outcome(signal, OutcomeStatus::Duplicate, Some(at), entry.count)
    }

    /// Creates `request`, annotated with who submitted it (`by`). If it exists
    /// already, the occurrence is counted on it as a repeat. If the sink fails, the
    /// request goes to the status writer, which keeps trying: the incident is
    /// recorded as open, so the sender's retry will be a duplicate, and the request
    /// it is counted in must get made. Each request created is one audit event,
    /// naming its submitter.
    pub(super) async fn create(
        &self,
        incident: Incident,
        mut request: RemediationRequest,
        at: &RequestRef,
        update: StatusUpdate,
        by: &str,
    ) -> Result<Created, SinkError> {
        let annotations = request.metadata.annotations.get_or_insert_with(Default::default);
        annotations.insert(remediation::SUBMITTED_BY_ANNOTATION.to_string(), by.to_string());
        let span =
            tracing::info_span!(target: trace::TARGET, "create", rr.namespace = %at.namespace, rr.name = %at.name);
        match self.sink.create(&request).instrument(span).await {
            Ok(Created::Created) => {
                self.metrics.requests_created.inc();
                let spec = &request.spec;
                audit::request_created(by, &at.namespace, &at.name, &spec.signal_name, &spec.signal_fingerprint);
                Ok(Created::Created)
            }
            Ok(Created::AlreadyExists) => {
                self.status_writer.repeat(incident, at, update);
                Ok(Created::AlreadyExists)
            }
            Err(e) => {
                tracing::warn!(error = %e, name = %at.name, "create failed; handing it to the status writer");
                self.status_writer.record_create(incident, request, at, update);
                Err(e)
            }
        }
    }

    /// Records the trace this request is created in, when it is sampled.
    pub(super) fn name_trace(&self, request: &mut RemediationRequest) {
        if let Some(id) = self.traced.then(trace::sampled_trace_id).flatten() {
            remediation::annotate(request, remediation::TRACE_ID_ANNOTATION, id);
        }
    }

    /// The environment and priority of a request about `signal`, counted.
    pub(super) fn classify(&self, signal: &Signal<'_>) -> remediation::Classification {
        let class = self.classifier.classify(signal);
        let labels = ClassLabels { environment: class.environment.clone(), priority: class.priority.clone() };
        self.metrics.classifications.get_or_create(&labels).inc();
        class
    }
}
