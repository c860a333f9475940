//! Coalesced status writes.
//!
//! A storm of duplicates must not become a storm of writes. The first update for a
//! request schedules one write `interval` later; updates arriving before then are
//! merged into it (counts and times only move forward), so each request is written
//! at most once per interval and the write always carries the latest count. A write
//! that fails is retried with backoff, and [`Coalescer::shutdown`] writes everything
//! still pending before the process exits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::remediation::{RemediationRequest, StatusUpdate};
use crate::sink::{Created, RequestRef, Sink, SinkError};
use crate::telemetry::{Metrics, SinkLabels};

/// Longest wait between retries of a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A request not found may still be being created (by this replica's pipeline or
/// another replica): retry this many times, with backoff, before giving up.
const NOT_FOUND_ATTEMPTS: u32 = 5;
/// Writes in flight at once.
const CONCURRENCY: usize = 32;

#[derive(Clone)]
pub struct Coalescer {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Notify,
    drained: Notify,
    sink: Arc<dyn Sink>,
    interval: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<RequestRef, Pending>,
    due: BinaryHeap<Reverse<(Instant, RequestRef)>>,
    in_flight: HashSet<RequestRef>,
    draining: bool,
}

struct Pending {
    update: StatusUpdate,
    /// Set when the request may not exist yet (its create failed): the write then
    /// creates it, so an acknowledged incident always gets its request.
    create: Option<Box<RemediationRequest>>,
    attempts: u32,
}

impl Coalescer {
    /// Starts the writer task. Must be called within a tokio runtime.
    pub fn new(sink: Arc<dyn Sink>, interval: Duration, metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner::default()),
            wake: Notify::new(),
            drained: Notify::new(),
            sink,
            interval,
            metrics,
        });
        tokio::spawn(writer(shared.clone()));
        Coalescer { shared }
    }

    /// Schedules `update` for the request at `at`.
    pub fn record(&self, at: RequestRef, update: StatusUpdate) {
        self.enqueue(at, update, None);
    }

    /// Schedules the creation of `request` (whose direct create failed), followed by
    /// `update` if it already exists by then.
    pub fn record_create(&self, request: RemediationRequest, at: RequestRef, update: StatusUpdate) {
        self.enqueue(at, update, Some(Box::new(request)));
    }

    /// Requests with a write pending.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Writes everything pending now and waits until done, or until `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        let drained = self.shared.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        {
            let mut inner = self.shared.lock();
            inner.draining = true;
            if inner.pending.is_empty() && inner.in_flight.is_empty() {
                return;
            }
        }
        self.shared.wake.notify_one();
        if tokio::time::timeout(deadline, drained).await.is_err() {
            tracing::error!(
                pending = self.pending(),
                "status writes still pending at shutdown deadline; they are lost"
            );
        }
    }

    fn enqueue(&self, at: RequestRef, update: StatusUpdate, create: Option<Box<RemediationRequest>>) {
        let shared = &self.shared;
        let mut inner = shared.lock();
        let due = if inner.draining { Instant::now() } else { Instant::now() + shared.interval };
        let Inner { pending, due: queue, .. } = &mut *inner;
        match pending.get_mut(&at) {
            Some(p) => {
                p.update.merge(&update);
                if p.create.is_none() {
                    p.create = create;
                }
                shared.metrics.status_coalesced.inc();
            }
            None => {
                let was_idle = queue.is_empty();
                pending.insert(at.clone(), Pending { update, create, attempts: 0 });
                queue.push(Reverse((due, at)));
                shared.metrics.status_pending.set(pending.len() as i64);
                drop(inner);
                if was_idle {
                    shared.wake.notify_one();
                }
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the writes that are due, or the time the next one is.
    fn take_due(&self) -> Result<Vec<(RequestRef, Pending)>, Option<Instant>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut ready = Vec::new();
        let mut later = Vec::new();
        while let Some(Reverse((due, _))) = inner.due.peek() {
            if *due > now && !inner.draining {
                break;
            }
            let Reverse((due, at)) = inner.due.pop().expect("peeked");
            if inner.in_flight.contains(&at) {
                // Never two writes to one request at once: wait for the first.
                later.push(Reverse((due.max(now) + self.interval.min(Duration::from_millis(50)), at)));
                continue;
            }
            if let Some(p) = inner.pending.remove(&at) {
                inner.in_flight.insert(at.clone());
                ready.push((at, p));
            }
        }
        inner.due.extend(later);
        self.metrics.status_pending.set(inner.pending.len() as i64);
        if !ready.is_empty() {
            return Ok(ready);
        }
        if inner.draining && inner.pending.is_empty() && inner.in_flight.is_empty() {
            self.drained.notify_waiters();
        }
        Err(inner.due.peek().map(|Reverse((due, _))| *due))
    }

    async fn write(&self, at: &RequestRef, p: &Pending) -> Result<(), SinkError> {
        if let Some(request) = &p.create {
            let mut request = (**request).clone();
            request.status.get_or_insert_with(Default::default).apply(&p.update);
            let created = self.sink.create(&request).await?;
            self.count("create", "ok");
            if created == Created::Created {
                self.metrics.requests_created.inc();
                return Ok(());
            }
        }
        self.sink.update_status(at, &p.update).await
    }

    fn finish(&self, at: RequestRef, p: Pending, result: Result<(), SinkError>) {
        let mut inner = self.lock();
        inner.in_flight.remove(&at);
        match result {
            Ok(()) => self.count("update_status", "ok"),
            Err(SinkError::NotFound(_)) if p.attempts + 1 >= NOT_FOUND_ATTEMPTS => {
                // Not created by anyone in all this time: it was deleted by hand.
                tracing::warn!(namespace = %at.namespace, name = %at.name, "dropping status update: the request no longer exists");
                self.count("update_status", "not_found");
            }
            Err(e) => {
                self.count("update_status", e.cause());
                let attempts = p.attempts + 1;
                let backoff = (self.interval * 2u32.saturating_pow(attempts)).min(MAX_BACKOFF);
                tracing::warn!(namespace = %at.namespace, name = %at.name, error = %e, attempts, "status write failed; retrying");
                let Inner { pending, due, draining, .. } = &mut *inner;
                if *draining && attempts >= 3 {
                    tracing::error!(namespace = %at.namespace, name = %at.name, "giving up on status write at shutdown");
                } else {
                    let retry = pending.entry(at.clone()).or_insert(Pending {
                        update: p.update.clone(),
                        create: None,
                        attempts,
                    });
                    retry.update.merge(&p.update);
                    retry.attempts = attempts;
                    if retry.create.is_none() {
                        retry.create = p.create;
                    }
                    due.push(Reverse((Instant::now() + backoff, at)));
                }
            }
        }
        drop(inner);
        self.wake.notify_one();
    }

    fn count(&self, op: &'static str, outcome: &'static str) {
        self.metrics.sink_writes.get_or_create(&SinkLabels { op, outcome }).inc();
    }
}

async fn writer(shared: Arc<Shared>) {
    loop {
        match shared.take_due() {
            Ok(ready) => {
                futures::stream::iter(ready)
                    .for_each_concurrent(CONCURRENCY, |(at, p)| {
                        let shared = &shared;
                        async move {
                            let result = shared.write(&at, &p).await;
                            shared.finish(at, p, result);
                        }
                    })
                    .await;
            }
            Err(next) => {
                let wake = shared.wake.notified();
                match next {
                    Some(at) => {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at) => {}
                            _ = wake => {}
                        }
                    }
                    None => wake.await,
                }
            }
        }
        if Arc::strong_count(&shared) == 1 {
            return;
        }
    }
}
