//! The connection loop: accepts connections and serves the router on each, with
//! the per-connection limits that `axum::serve` cannot set.
//!
//! `axum::serve` gives hyper no timer, and without one hyper applies no header-read
//! timeout: a client that trickles its request head (slow loris), or opens a
//! connection and sends nothing, holds the connection and its read buffer for ever.
//! Here every connection has
//! - `http.header_read_timeout`: each request head, including the wait for the next
//!   one on a kept-alive connection, arrives within it or the connection is closed;
//! - `http.max_header_bytes`: a longer head is answered 431 (hyper writes it) and
//!   the connection closed: no sender's head is that long, so it never will be taken;
//! - at most `http.max_connections` open at once; further connections wait in the
//!   kernel's accept backlog, costing the process nothing;
//! - with `http.tls`, its handshake done in the connection's own task (a slow or
//!   silent client cannot stall the accept loop), and the verified client
//!   certificate, if any, on each of its requests as a [`PeerCertificate`].
//!
//! Bodies are bounded by the handler (`http.body_read_timeout`, the body budget).
//! Nothing here looks inside a request.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::tls::{PeerCertificate, Tls};
use super::HttpConfig;
use crate::telemetry::{Metrics, ReasonLabels};

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown` completes,
/// then stops accepting, asks every connection to finish its request in flight and
/// close, and returns once all have: what
/// `axum::serve(..).with_graceful_shutdown(shutdown)` does.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpConfig,
    tls: Option<Tls>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((stream, peer, slot)) = accepted else { continue };
        let (router, http, tls, metrics, watcher) =
            (router.clone(), http.clone(), tls.clone(), metrics.clone(), graceful.watcher());
        tokio::spawn(async move {
            let served = match tls {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service(router, peer, None))).await,
                Some(tls) => {
                    let Some((stream, certificate)) = tls.accept(stream, peer, &metrics).await else { return };
                    let service = service(router, peer, certificate);
                    watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await
                }
            };
            if let Err(e) = served {
                closed_early(&metrics, &e);
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The router, with what is known of the connection's peer on each request.
fn service(
    router: Router,
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        router.clone().oneshot(request.map(Body::new))
    })
}

/// The next connection, once there is a slot for it; `None` after an accept error
/// (a connection reset before it was accepted, or out of file descriptors, after
/// which accepting waits a moment rather than spin).
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(tokio::net::TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
    match listener.accept().await {
        Ok((stream, peer)) => Some((stream, peer, slot)),
        Err(e) => {
            use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
            if !matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
                tracing::warn!(error = %e, "cannot accept connections; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None
        }
    }
}

/// Counts a connection hyper closed because of its client: too slow with its
/// head, or a head too large (answered 431 first).
fn closed_early(metrics: &Metrics, e: &hyper::Error) {
    let reason = if e.is_timeout() {
        "header_timeout"
    } else if e.is_parse_too_large() {
        "header_too_large"
    } else {
        tracing::debug!(error = %e, "connection closed");
        return;
    };
    metrics.rejections.get_or_create(&ReasonLabels { reason }).inc();
}
