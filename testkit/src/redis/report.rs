//! The exit-time memory report of the shared server: what the suite left in Redis,
//! per fingerprint recorded.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::{process, try_dbsize, try_info, BASELINE_USED_MEMORY, SHARED};

static REPORT_COUNTER: OnceLock<&'static AtomicU64> = OnceLock::new();

/// Asks for a memory report of the [`shared()`] server at process exit, on stderr and
/// stdout, with `fingerprints` (normally `&FINGERPRINTS`) as the divisor for bytes per
/// fingerprint. Printed only if the shared server was actually started. Calling it
/// again is harmless (the first counter wins).
pub fn register_memory_report(fingerprints: &'static AtomicU64) {
    let _ = REPORT_COUNTER.set(fingerprints);
    process::before_exit(print_memory_report);
}

/// Prints the report on stderr and stdout, at exit (before the servers are killed).
fn print_memory_report() {
    if let Some(report) = memory_report() {
        let _ = io::stderr().write_all(report.as_bytes());
        let mut out = io::stdout().lock();
        let _ = out.write_all(report.as_bytes());
        let _ = out.flush();
    }
}

fn memory_report() -> Option<String> {
    let server = SHARED.get()?;
    let fingerprints = REPORT_COUNTER.get()?.load(Ordering::Relaxed);
    let baseline = BASELINE_USED_MEMORY.load(Ordering::Relaxed);
    let mut out = format!("── redis memory report: shared server {} (16mb, noeviction) ──\n", server.addr());
    let stats = try_info(server.port, "memory").and_then(|info| Ok((info, try_dbsize(server.port)?)));
    let (info, keys) = match stats {
        Ok(stats) => stats,
        Err(e) => {
            out.push_str(&format!("  unavailable: {e}\n"));
            return Some(out);
        }
    };
    let num = |k: &str| info.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let (used, peak) = (num("used_memory"), num("used_memory_peak"));
    let growth = used as i64 - baseline as i64;
    let per_fp = if fingerprints == 0 {
        "n/a (no fingerprints recorded)".to_owned()
    } else {
        format!("{:.1} B", growth as f64 / fingerprints as f64)
    };
    let frag = info.get("mem_fragmentation_ratio").map(String::as_str).unwrap_or("?");
    out.push_str(&format!(
        "  used_memory_peak         {}\n\
         \x20 used_memory              {}\n\
         \x20 baseline used_memory     {} (right after start)\n\
         \x20 keys (DBSIZE)            {keys}\n\
         \x20 mem_fragmentation_ratio  {frag} (RSS / used; meaningless for a few MB)\n\
         \x20 fingerprints recorded    {fingerprints}\n\
         \x20 bytes per fingerprint    {per_fp} = (used - baseline) / fingerprints\n\
         \x20 (used_memory includes the buffers of client connections still open)\n",
        human(peak),
        human(used),
        human(baseline),
    ));
    Some(out)
}

fn human(bytes: u64) -> String {
    format!("{bytes} B ({:.2} MiB)", bytes as f64 / (1024.0 * 1024.0))
}
