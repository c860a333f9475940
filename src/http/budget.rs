//! The budget of request-body bytes in flight: memory stays bounded, and a large
//! body is delayed, never refused for good.
//!
//! A request reserves its body's size before reading it (its `Content-Length`, or
//! chunk by chunk when none is declared) and holds the reservation until it has been
//! answered, because its signals borrow from the body. When other bodies fill the
//! budget, it waits its turn (first come, first served, so a large body is not
//! starved by small ones) for at most `http.body_budget_wait`, then is answered 503
//! with `Retry-After`, which every sender retries. A 413 is only for a body over
//! `http.body_limit`, which no legitimate sender produces.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::problem::Problem;
use crate::telemetry::Metrics;

/// Body bytes that all requests may hold at once.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    wait: Duration,
    metrics: Arc<Metrics>,
}

/// Body bytes held by one request, given back when it is dropped.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
}

impl Reservation {
    fn bytes(&self) -> u64 {
        self.permit.as_ref().map_or(0, |p| p.num_permits() as u64)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.metrics.body_bytes_in_flight.dec_by(self.bytes() as i64);
    }
}

/// Why a body was not read.
pub enum Refused {
    /// Over `http.body_limit`: 413.
    TooLarge,
    /// No room in the budget within the wait: 503.
    NoRoom { bytes: u64 },
    /// The connection failed mid-body: 400.
    Unreadable(axum::Error),
    /// The body did not arrive within `http.body_read_timeout`: 503, as a slow
    /// network may be faster on a retry.
    TooSlow { bytes: u64, timeout: Duration },
}

impl BodyBudget {
    pub fn new(total: u64, wait: Duration, metrics: Arc<Metrics>) -> Self {
        let total = usize::try_from(total).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        BodyBudget { bytes: Arc::new(Semaphore::new(total)), wait, metrics }
    }

    /// An empty reservation, to grow as a body arrives.
    fn empty(&self) -> Reservation {
        Reservation { permit: None, metrics: self.metrics.clone() }
    }

    /// Grows `held` by `bytes`, waiting at most `http.body_budget_wait` for room.
    async fn reserve(&self, held: &mut Reservation, bytes: usize) -> Result<(), Refused> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).map_err(|_| Refused::TooLarge)?;
        let acquire = self.bytes.clone().acquire_many_owned(n);
        let permit = match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => permit,
            // Timed out (or closed, which this budget never is): try again later.
            _ => return Err(Refused::NoRoom { bytes: held.bytes() + bytes as u64 }),
        };
        self.metrics.body_bytes_in_flight.inc_by(bytes as i64);
        match &mut held.permit {
            Some(mine) => mine.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }

    /// Reads a body of at most `limit` bytes within `timeout`, holding its bytes in
    /// the budget. A declared `Content-Length` is reserved (or refused) before
    /// anything is read.
    pub async fn read(
        &self,
        declared: Option<u64>,
        body: Body,
        limit: usize,
        timeout: Duration,
    ) -> Result<(Bytes, Reservation), Refused> {
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(Refused::TooLarge);
        }
        let mut held = self.empty();
        let declared = declared.unwrap_or(0) as usize;
        self.reserve(&mut held, declared).await?;
        let mut body = body;
        let mut buf = Vec::with_capacity(declared);
        // A trickled body would otherwise hold its reservation for as long as its
        // sender likes: a few of them would starve every other sender.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return Err(Refused::TooSlow { bytes: buf.len() as u64, timeout }),
            };
            let frame = frame.map_err(Refused::Unreadable)?;
            let Ok(data) = frame.into_data() else { continue };
            if buf.len() + data.len() > limit {
                return Err(Refused::TooLarge);
            }
            let beyond = (buf.len() + data.len()).saturating_sub(held.bytes() as usize);
            self.reserve(&mut held, beyond).await?;
            buf.extend_from_slice(&data);
        }
        Ok((Bytes::from(buf), held))
    }
}

impl Refused {
    pub fn problem(self, limit: usize, wait: Duration, retry_after_secs: u32) -> Problem {
        match self {
            Refused::TooLarge => Problem::too_large(limit),
            Refused::NoRoom { bytes } => Problem::body_budget(bytes, wait, retry_after_secs),
            Refused::Unreadable(e) => Problem::unreadable_body(&e),
            Refused::TooSlow { bytes, timeout } => Problem::body_timeout(bytes, timeout, retry_after_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body read timeout no test reaches.
    const SLOW: Duration = Duration::from_secs(3600);

    fn budget(total: u64, wait_ms: u64) -> BodyBudget {
        BodyBudget::new(total, Duration::from_millis(wait_ms), Arc::new(Metrics::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_fit_waits_for_room_and_then_is_read() {
        let b = budget(100, 1000);
        let (_, first) = b.read(Some(80), Body::from(vec![b'x'; 80]), 1000, SLOW).await.ok().unwrap();
        let second = tokio::spawn({
            let b = b.clone();
            async move { b.read(Some(50), Body::from(vec![b'y'; 50]), 1000, SLOW).await.is_ok() }
        });
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(!second.is_finished(), "waits while the first body is held");
        drop(first);
        assert!(second.await.unwrap(), "read once the first body is answered");
    }

    #[tokio::test(start_paused = true)]
    async fn no_room_within_the_wait_is_a_retryable_refusal_not_a_413() {
        let b = budget(100, 200);
        let (_, _held) = b.read(Some(80), Body::from(vec![b'x'; 80]), 1000, SLOW).await.ok().unwrap();
        match b.read(Some(50), Body::from(vec![b'y'; 50]), 1000, SLOW).await {
            Err(Refused::NoRoom { bytes: 50 }) => {}
            _ => panic!("expected NoRoom"),
        }
        let problem =
            b.read(None, Body::from(vec![b'y'; 50]), 1000, SLOW).await.err().unwrap().problem(1000, b.wait, 5);
        assert_eq!((problem.status.as_u16(), problem.retry_after_secs), (503, Some(5)));
    }

    #[tokio::test]
    async fn over_the_limit_is_413_whether_declared_or_streamed() {
        let b = budget(1 << 20, 100);
        assert!(matches!(b.read(Some(11), Body::from(vec![0u8; 11]), 10, SLOW).await, Err(Refused::TooLarge)));
        assert!(matches!(b.read(None, Body::from(vec![0u8; 11]), 10, SLOW).await, Err(Refused::TooLarge)));
        let (bytes, held) = b.read(None, Body::from(vec![7u8; 10]), 10, SLOW).await.ok().unwrap();
        assert_eq!((bytes.len(), held.bytes()), (10, 10));
    }
}
