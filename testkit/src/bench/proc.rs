//! What `/proc` says of another process: the servers the benches start.

/// `VmRSS` of `/proc/<pid>/status`, in bytes; `None` once the process is gone.
pub fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(kb.split_whitespace().next()?.parse::<u64>().expect("VmRSS is a number of kB") * 1024)
}
