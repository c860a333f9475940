//! The fault tracks

use super::*;

/// The state and process track: one fault at a time, on a thread of its own (the
/// Redis helpers block).
pub(crate) fn state_track(
    setup: Arc<SentinelSetup>,
    gateways: Arc<Gateways>,
    mut rng: Rng,
    settings: (Duration, (f64, f64), bool),
    events: Arc<Mutex<Vec<Event>>>,
) {
    let (length, gap, smoke) = settings;
    let began = Instant::now();
    let mut schedule = Schedule::new(rng.fork(), &STATE_FAULTS);
    while began.elapsed() < length || (smoke && !schedule.all_seen()) {
        std::thread::sleep(Duration::from_secs_f64(rng.between(gap.0, gap.1)));
        let kind = schedule.next();
        let before = converge(&setup);
        let start = Instant::now();
        let mut killed = None;
        let mut detail = match kind {
            Kind::RedisKillRestart => {
                let server = setup.server(before);
                server.kill();
                server.restart();
                format!("primary {before}")
            }
            Kind::RedisKillFailover => {
                setup.server(before).kill();
                let promoted = wait_new_primary(&setup, before);
                setup.server(before).restart();
                format!("primary {before} killed, {promoted} promoted")
            }
            Kind::SentinelFailover => {
                // A sentinel refuses while it has not yet seen the replica healthy
                // (NOGOODSLAVE) or is still in its last failover (INPROG), and a
                // failover it accepted can still be aborted (the replica not
                // promoted within failover-timeout): ask again, as an operator would.
                let deadline = Instant::now() + CONVERGE_TIMEOUT;
                let mut refusals = Vec::new();
                let promoted = loop {
                    let accepted = setup.sentinels().iter().any(|s| {
                        redis_con(s.port()).is_some_and(|mut con| {
                            let asked = redis::cmd("SENTINEL").arg("FAILOVER").arg(MASTER_NAME).query::<()>(&mut con);
                            asked.map_err(|e| refusals.push(e.to_string())).is_ok()
                        })
                    });
                    let wait = if accepted { Duration::from_secs(15) } else { Duration::from_millis(200) };
                    if let Some(promoted) = new_primary_within(&setup, before, wait) {
                        break promoted;
                    }
                    assert!(Instant::now() < deadline, "no failover away from {before}: {refusals:?}");
                };
                format!("{before} → {promoted}")
            }
            Kind::ClientPause => {
                let ms = rng.between(200.0, 2000.0) as u64;
                let mode = if rng.below(2) == 0 { "ALL" } else { "WRITE" };
                let mut con = redis_con(before).expect("the primary answers");
                let () = redis::cmd("CLIENT").arg("PAUSE").arg(ms).arg(mode).query(&mut con).expect("CLIENT PAUSE");
                std::thread::sleep(Duration::from_millis(ms));
                format!("{ms} ms {mode}")
            }
            Kind::GatewayKill => {
                let r = rng.below(gateways.replicas.len() as u64) as usize;
                gateways.sigkill(r);
                killed = Some((r, Instant::now()));
                let ready = gateways.start(r);
                format!("replica {r}, ready again after {:.1} s", (ready - start).as_secs_f64())
            }
            _ => unreachable!("not a state fault"),
        };
        let after = converge(&setup);
        if after != before && kind == Kind::ClientPause {
            // A pause long enough for the sentinels to take the primary for failed.
            let _ = write!(detail, "; the sentinels failed over to {after}");
        }
        let event = Event { kind, start, end: Instant::now(), killed, detail };
        println!("  fault {:>6.1} s: {} ({})", (start - began).as_secs_f64(), kind.describe(), event.detail);
        lock(&events).push(event);
    }
}

/// The Kubernetes track: faults through the proxy.
pub(crate) async fn kube_track(
    kube: Arc<Kube>,
    mut rng: Rng,
    settings: (Duration, (f64, f64), bool),
    events: Arc<Mutex<Vec<Event>>>,
) {
    let (length, gap, smoke) = settings;
    let began = Instant::now();
    let mut schedule = Schedule::new(rng.fork(), &KUBE_FAULTS);
    let requests = Matching { watch: Some(false), ..Matching::any() };
    while began.elapsed() < length || (smoke && !schedule.all_seen()) {
        tokio::time::sleep(Duration::from_secs_f64(rng.between(gap.0, gap.1))).await;
        let kind = schedule.next();
        let start = Instant::now();
        let detail = match kind {
            Kind::Kube500 | Kind::Kube429 => {
                let n = 3 + rng.below(15) as usize;
                let fault = if kind == Kind::Kube500 { Fault::InternalError } else { Fault::TooManyRequests };
                kube.proxy.fail_next(n, fault, requests.clone());
                format!("the next {n} requests")
            }
            Kind::KubeDown => {
                let secs = rng.between(1.0, 5.0);
                kube.proxy.set_down(true);
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                kube.proxy.set_down(false);
                format!("{secs:.1} s")
            }
            Kind::KubeCutWatches => {
                kube.proxy.cut_watches();
                String::new()
            }
            _ => unreachable!("not a Kubernetes fault"),
        };
        println!("  fault {:>6.1} s: {} {detail}", (start - began).as_secs_f64(), kind.describe());
        lock(&events).push(Event { kind, start, end: Instant::now(), killed: None, detail });
    }
}
