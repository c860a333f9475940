//! The check

use super::*;

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) incidents: usize,
    pub(crate) requests: usize,
    pub(crate) acked: u64,
    pub(crate) unacked: u64,
    pub(crate) counted: u64,
    /// Σ max(0, A − C): acknowledged alerts the requests do not count.
    pub(crate) lost: u64,
    /// Σ max(0, C − A): counts from attempts that were never acknowledged.
    pub(crate) extra: u64,
    /// Σ of each incident's loss bound.
    pub(crate) bound: u64,
    /// The incident that came closest to its bound: (lost, bound).
    pub(crate) worst: (u64, u64),
    pub(crate) violations: Vec<String>,
}

pub(crate) fn check(
    senders: &Senders,
    gateways: &Gateways,
    requests: &[RemediationRequest],
    seen: &Seen,
    events: &[Event],
) -> Report {
    let mut report = Report { incidents: senders.incidents.len(), requests: requests.len(), ..Report::default() };
    let index: HashMap<(&str, &str), usize> = senders
        .incidents
        .iter()
        .enumerate()
        .map(|(i, inc)| ((inc.alertname.as_str(), inc.deployment.as_str()), i))
        .collect();
    let mut per_incident: Vec<Vec<&RemediationRequest>> = vec![Vec::new(); senders.incidents.len()];
    for rr in requests {
        let key = (rr.spec.signal_name.as_str(), rr.spec.target_resource.name.as_str());
        match index.get(&key) {
            Some(&i) if rr.spec.storm.is_none() => per_incident[i].push(rr),
            _ => report.violations.push(format!(
                "request {} ({} on {}/{}) is no incident's own request",
                rr.name_any(),
                rr.spec.signal_name,
                rr.spec.target_resource.kind,
                rr.spec.target_resource.name
            )),
        }
    }
    let kills: Vec<(usize, Instant)> = events.iter().filter_map(|e| e.killed).collect();
    let incarnations = lock(&gateways.incarnations);
    for (i, rrs) in per_incident.iter().enumerate() {
        let incident = &senders.incidents[i];
        let book = senders.ledger.book(i);
        let acked = book.acked.len() as u64;
        let counted: u64 = rrs.iter().map(|rr| count_of(rr)).sum();
        let names: Vec<String> = rrs.iter().map(|rr| rr.name_any()).collect();
        report.acked += acked;
        report.unacked += book.unacked;
        report.counted += counted;
        if acked > 0 && rrs.len() != 1 {
            report.violations.push(format!(
                "{} on {}: {} requests {names:?} for one incident (answered names {:?})",
                incident.alertname,
                incident.deployment,
                rrs.len(),
                book.names
            ));
        }
        // The documented loss: at each SIGKILL, what the killed process acknowledged
        // and its tallies in the cluster did not hold yet (see the module doc).
        let mut bound = 0;
        for (k, &(r, at)) in kills.iter().enumerate() {
            let since = kills[..k].iter().rev().find(|(killed, _)| *killed == r).map(|&(_, t)| t);
            // Attempts sent while the killed process was the replica's: it answered them.
            let acked_by =
                book.acked.iter().filter(|a| a.replica == r && a.sent <= at && since.is_none_or(|s| a.sent > s));
            let killed = incarnations.iter().rev().find(|inc| inc.replica == r && inc.ready <= at);
            let process = killed.and_then(|inc| inc.writer.as_deref());
            let landed: u64 = process.map_or(0, |p| names.iter().map(|n| seen.landed(n, p, at)).sum());
            bound += (acked_by.count() as u64).saturating_sub(landed);
        }
        let lost = acked.saturating_sub(counted);
        let extra = counted.saturating_sub(acked);
        report.lost += lost;
        report.extra += extra;
        report.bound += bound;
        if lost > 0 && (report.worst.1 == 0 || lost * report.worst.1 > report.worst.0 * bound) {
            report.worst = (lost, bound);
        }
        if lost > bound {
            report.violations.push(format!(
                "{} on {}: {acked} acknowledged, {counted} counted: {lost} lost, more than the documented bound of {bound}",
                incident.alertname, incident.deployment
            ));
        }
        if counted > acked + book.unacked {
            report.violations.push(format!(
                "{} on {}: {counted} counted, more than the {acked} acknowledged plus {} unacknowledged attempts",
                incident.alertname, incident.deployment, book.unacked
            ));
        }
    }
    report
}

/// `CHAOS_TRACE=1`: for the incident that lost the most, every change of its count
/// in the cluster against its acknowledged alerts, and the faults, in time order.
pub(crate) fn trace(senders: &Senders, requests: &[RemediationRequest], seen: &Seen, events: &[Event], began: Instant) {
    let names_of = |i: usize| -> Vec<String> {
        let incident = &senders.incidents[i];
        requests
            .iter()
            .filter(|rr| {
                rr.spec.signal_name == incident.alertname && rr.spec.target_resource.name == incident.deployment
            })
            .map(|rr| rr.name_any())
            .collect()
    };
    let lost = |i: usize| {
        let counted: u64 = requests.iter().filter(|rr| names_of(i).contains(&rr.name_any())).map(count_of).sum();
        (senders.ledger.book(i).acked.len() as u64).saturating_sub(counted)
    };
    let worst = (0..senders.incidents.len()).max_by_key(|&i| lost(i)).unwrap_or(0);
    let (names, lost) = (names_of(worst), lost(worst));
    let book = senders.ledger.book(worst);
    let mut lines: Vec<(Instant, String)> = Vec::new();
    for name in &names {
        for &(t, count) in seen.series.get(name).map(Vec::as_slice).unwrap_or_default() {
            let acked = book.acked.partition_point(|a| a.answered <= t);
            lines.push((t, format!("count {count:>6}  acked {acked:>6}  gap {:>6}", acked as i64 - count as i64)));
        }
    }
    for e in events {
        lines.push((e.start, format!("  >> {:?} begins ({})", e.kind, e.detail)));
        lines.push((e.end, format!("  << {:?} over", e.kind)));
    }
    lines.sort_by_key(|(t, _)| *t);
    println!("trace of incident {worst} ({names:?}), lost {lost}:");
    for (t, line) in lines {
        println!("  {:>6.1} s  {line}", t.saturating_duration_since(began).as_secs_f64());
    }
}

pub(crate) fn print_report(
    settings: &Settings,
    chaos: Duration,
    senders: &Senders,
    events: &[Event],
    report: &Report,
    undelivered: bool,
    settled: bool,
) {
    let tally = &senders.ledger.tally;
    println!();
    println!("== chaos report (seed {}, {:.0} s of faults)", settings.seed, chaos.as_secs_f64());
    println!("faults injected:");
    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    for e in events {
        *counts.entry(e.kind).or_default() += 1;
    }
    for kind in STATE_FAULTS.iter().chain(&KUBE_FAULTS) {
        println!("  {:>4}  {}", counts.get(kind).copied().unwrap_or(0), kind.describe());
    }
    println!("  ({} of them can lose counts: gateway SIGKILLs)", events.iter().filter(|e| e.killed.is_some()).count());
    println!("senders ({} of them):", settings.senders);
    println!(
        "  notifications {}, attempts {}, retries {}",
        get(&tally.notifications),
        get(&tally.attempts),
        get(&tally.retries)
    );
    println!(
        "  answered 5xx {}, connection errors or timeouts {}, 4xx {} ({} alerts dropped)",
        get(&tally.answered_5xx),
        get(&tally.transport_errors),
        get(&tally.answered_4xx),
        get(&tally.alerts_rejected)
    );
    println!(
        "  alerts acknowledged {}, alert-attempts unacknowledged {}, odd results {}",
        get(&tally.alerts_acked),
        report.unacked,
        get(&tally.odd_results)
    );
    println!("ledger against the cluster:");
    println!("  incidents {}, requests {}", report.incidents, report.requests);
    println!(
        "  acknowledged {}, counted {} ({:+}): lost {}, counted beyond acknowledged {} (of {} unacknowledged attempts)",
        report.acked,
        report.counted,
        report.counted as i64 - report.acked as i64,
        report.lost,
        report.extra,
        report.unacked
    );
    println!(
        "  documented loss bound, summed over incidents: {} (worst incident: lost {} of a bound of {})",
        report.bound, report.worst.0, report.worst.1
    );
    let check = |ok: bool| if ok { "ok" } else { "VIOLATED" };
    let one_request = !report.violations.iter().any(|v| v.contains("requests") || v.contains("no incident"));
    let within = !report.violations.iter().any(|v| v.contains("bound") || v.contains("more than the"));
    println!("checks:");
    println!("  every acknowledged alert counted in exactly one request: {}", check(one_request && within));
    println!("  no incident has two open requests: {}", check(one_request));
    println!("  counts lost within the documented bound: {}", check(within));
    println!("  no valid alert answered 4xx: {}", check(get(&tally.answered_4xx) == 0));
    println!("  every alert of a 2xx answered created or duplicate: {}", check(get(&tally.odd_results) == 0));
    println!("  every notification answered 2xx in the end: {}", check(!undelivered));
    println!(
        "  status writers drained before the stop: {}",
        if settled { "yes" } else { "no (the graceful stop wrote the rest)" }
    );
    for v in &report.violations {
        println!("  VIOLATION: {v}");
    }
    for n in lock(&senders.ledger.notes).iter() {
        println!("  note: {n}");
    }
}
