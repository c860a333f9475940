//! The run

use super::*;

pub(crate) async fn run(settings: Settings) -> ExitCode {
    let mut rng = Rng(settings.seed);
    let started = Instant::now();

    let kube = Arc::new(Kube::new().await);
    let namespace = kube.namespace("chaos", &[]).await;
    let setup = Arc::new(tokio::task::spawn_blocking(SentinelSetup::start).await.expect("Sentinel setup"));
    let sentinels: Vec<String> =
        setup.sentinel_urls().iter().map(|u| u.trim_start_matches("redis://").to_string()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let gateways = Arc::new(Gateways {
        replicas: (0..2)
            .map(|r| Replica {
                port: process::pick_port(None),
                child: Mutex::new(None),
                log: dir.path().join(format!("tidegate-{r}.log")),
            })
            .collect(),
        incarnations: Mutex::default(),
        state_url: format!("redis+sentinel://{}/{MASTER_NAME}", sentinels.join(",")),
        kubeconfig: write_kubeconfig(dir.path(), &kube.proxy.url, kube.gateway_token()),
        prefix: format!("chaos{}:", std::process::id()),
    });
    {
        let gateways = gateways.clone();
        tokio::task::spawn_blocking(move || {
            for r in 0..gateways.replicas.len() {
                gateways.start(r);
            }
        })
        .await
        .expect("starting the gateways");
    }
    println!(
        "set up in {:.1} s: API server through the fault proxy, Redis primary + replica + 3 sentinels, 2 gateways; namespace {namespace}",
        started.elapsed().as_secs_f64()
    );

    let senders = Arc::new(Senders {
        client: reqwest::Client::builder().timeout(ATTEMPT_TIMEOUT).build().expect("HTTP client"),
        urls: (0..gateways.replicas.len()).map(|r| gateways.url(r)).collect(),
        namespace: namespace.clone(),
        incidents: (0..settings.incidents).map(Incident::nth).collect(),
        ledger: Ledger {
            books: (0..settings.incidents).map(|_| Mutex::default()).collect(),
            tally: Tally::default(),
            notes: Mutex::default(),
        },
        stopping: AtomicBool::new(false),
        backoff_cap: settings.backoff_cap,
    });
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop_polling = Arc::new(AtomicBool::new(false));
    let poll_task =
        tokio::spawn(poller(Api::namespaced(kube.admin.clone(), &namespace), seen.clone(), stop_polling.clone()));
    let sender_tasks: Vec<_> =
        (0..settings.senders).map(|id| tokio::spawn(sender(senders.clone(), id, rng.fork()))).collect();

    // The chaos.
    let events = Arc::new(Mutex::new(Vec::new()));
    let length = Duration::from_secs(settings.seconds);
    let track = (length, settings.gap, settings.smoke);
    let chaos_started = Instant::now();
    let state = {
        let (setup, gateways, rng, events) = (setup.clone(), gateways.clone(), rng.fork(), events.clone());
        tokio::task::spawn_blocking(move || state_track(setup, gateways, rng, track, events))
    };
    let kube_faults = tokio::spawn(kube_track(kube.clone(), rng.fork(), track, events.clone()));
    let (state, kube_faults) = tokio::join!(state, kube_faults);
    if let Err(e) = state.and(kube_faults) {
        eprintln!("a fault track failed: {e}");
        return ExitCode::FAILURE;
    }
    let chaos = chaos_started.elapsed();
    println!("chaos over after {:.1} s; the system is whole again, draining the senders", chaos.as_secs_f64());

    // Whole again: faults cleared, one primary with its replica, both gateways up.
    kube.proxy.clear_faults();
    kube.proxy.set_down(false);
    {
        let (setup, gateways) = (setup.clone(), gateways.clone());
        tokio::task::spawn_blocking(move || {
            converge(&setup);
            for r in 0..gateways.replicas.len() {
                let running =
                    lock(&gateways.replicas[r].child).as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none());
                if !running {
                    gateways.start(r);
                }
            }
        })
        .await
        .expect("restoring the system");
    }

    // Every notification in flight is retried until answered.
    senders.stopping.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, futures::future::join_all(sender_tasks)).await;
    let undelivered = drained.is_err();

    // The status writers drain, then a graceful stop writes whatever is left.
    let settle_started = Instant::now();
    let settled = {
        let gateways = gateways.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            let mut quiet = 0;
            while quiet < 3 && Instant::now() < deadline {
                let all_zero = gateways.replicas.iter().all(|r| pending_writes(r.port) == Some(0.0));
                quiet = if all_zero { quiet + 1 } else { 0 };
                std::thread::sleep(Duration::from_millis(500));
            }
            let stops: Vec<_> = (0..gateways.replicas.len()).map(|r| gateways.stop(r)).collect();
            (quiet >= 3, stops)
        })
        .await
        .expect("settling")
    };
    println!(
        "settled in {:.1} s (status writers drained: {}; graceful stops: {:?})",
        settle_started.elapsed().as_secs_f64(),
        settled.0,
        settled.1
    );
    // One last look at the requests, after every write.
    tokio::time::sleep(POLL * 2).await;
    stop_polling.store(true, Ordering::Relaxed);
    let _ = poll_task.await;
    let api: Api<RemediationRequest> = Api::namespaced(kube.admin.clone(), &namespace);
    let requests = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            eprintln!("listing the requests failed: {e}");
            return ExitCode::FAILURE;
        }
    };

    let events = lock(&events).clone();
    if std::env::var_os("CHAOS_TRACE").is_some() {
        trace(&senders, &requests, &lock(&seen), &events, chaos_started);
    }
    let report = check(&senders, &gateways, &requests, &lock(&seen), &events);
    print_report(&settings, chaos, &senders, &events, &report, undelivered, settled.0);
    let tally = &senders.ledger.tally;
    let failed =
        !report.violations.is_empty() || undelivered || get(&tally.answered_4xx) > 0 || get(&tally.odd_results) > 0;
    if failed {
        for r in 0..gateways.replicas.len() {
            eprintln!("--- gateway {r} log (tail):\n{}", gateways.log(r));
        }
        eprintln!("chaos run FAILED (seed {}): see the violations above", settings.seed);
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
