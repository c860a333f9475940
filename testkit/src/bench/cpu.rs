//! CPU time from `/proc`, for the benches that split where the cores went. Each
//! bench uses what it needs of it.
#![allow(dead_code)]

/// User plus system CPU time of a process (all its threads), in seconds, from
/// `/proc/<pid>/stat`; `pid` may be `self`. 0 if unreadable.
pub fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name, which may contain spaces:
    // state is field 3, utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz.max(1) as f64
}

/// CPU seconds all cores spent busy since boot, from the first line of `/proc/stat`
/// (user, nice, system, irq, softirq, steal; not idle or iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    busy as f64 / hz.max(1) as f64
}

/// CPU time this process has used, all its threads, from its CPU-time clock:
/// nanoseconds, where `/proc`'s ticks are 10 ms, for phases of a few ms.
pub fn process_cpu() -> std::time::Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given, which outlives the call.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(read, 0, "the process CPU clock");
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}
