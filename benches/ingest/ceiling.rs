//! The ceiling: the least a server must do with the ingest bench's load, to compare
//! tidegate against what this machine allows.
//!
//! A bare hyper HTTP/1.1 server on a multi-threaded tokio runtime with as many
//! workers as tidegate's default (one per core): for each request it reads the whole
//! body, parses it with tidegate's own Alertmanager webhook parser
//! ([`tidegate::ingest::alertmanager::parse`]: serde into the same alert type, and
//! each alert's SHA-256 fingerprint, exactly as the gateway computes them) and
//! answers 200. No dedup, no state, no sink, no auth, no rate limit, no metrics:
//! whatever tidegate does beyond this is what the fraction of the ceiling prices.
//!
//! It runs as a separate process (the bench binary started again with
//! `BENCH_CEILING_LISTEN` set), so its CPU is read from `/proc` as the other
//! servers' is and it shares nothing with the load generator. `GET /alerts` answers
//! how many alerts it parsed, so the bench checks it did the work it was paid for.
//! It must never be used as a server for anything but this bench.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tidegate::ingest::alertmanager;
use tidegate::ingest::Payload;

/// The environment variable that turns the bench binary into the ceiling server,
/// listening on its value.
pub const LISTEN: &str = "BENCH_CEILING_LISTEN";

/// Serves until killed.
pub fn serve(listen: &str) -> ! {
    tidegate::allocator::tune();
    let addr: SocketAddr = listen.parse().expect("BENCH_CEILING_LISTEN is an address");
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("the ceiling's runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("the ceiling binds its address");
        let parsed = Arc::new(AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let parsed = parsed.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| handle(request, parsed.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle(request: Request<Incoming>, parsed: Arc<AtomicU64>) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, "application/json".parse().expect("a header"));
        Ok(response)
    };
    if request.method() == Method::GET {
        return answer(StatusCode::OK, parsed.load(Ordering::Relaxed).to_string());
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, "{\"error\":\"body\"}".into());
    };
    let payload = Payload { body: &body, headers: &parts.headers, received: jiff::Timestamp::now() };
    let Ok(signals) = alertmanager::parse(&payload) else {
        return answer(StatusCode::BAD_REQUEST, "{\"error\":\"parse\"}".into());
    };
    let mut accepted = 0u64;
    for signal in signals.iter().flatten() {
        // Kept, so the fingerprint is never optimised away.
        std::hint::black_box(signal.fingerprint);
        accepted += 1;
    }
    parsed.fetch_add(accepted, Ordering::Relaxed);
    answer(StatusCode::OK, format!("{{\"accepted\":{accepted}}}"))
}
