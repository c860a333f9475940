//! The process allocator: mimalloc, tuned for a gateway whose big allocations are
//! hash tables that double as the embedded store grows.
//!
//! The request path allocates many small, short-lived values per alert; glibc
//! malloc spent about a fifth of the gateway's CPU on them under load (see `cargo
//! bench --bench ingest`). mimalloc's per-thread free lists cut that to a few
//! percent. By default mimalloc keeps freed memory committed for a while before
//! returning it; after a table doubles, that is the whole old table. [`tune`] has
//! it return freed memory at once, so resident memory is what the store holds
//! (`cargo bench --bench memory`).
//!
//! [`tune`] also turns transparent huge pages off for the process. mimalloc asks for
//! them on its arenas, and then every page it hands back and takes again costs the
//! kernel a fresh 2 MiB page to zero, even for a 16 KiB buffer: with the Redis
//! backend, `clear_page_erms` was a sixth to a quarter of the gateway's CPU. Turning
//! THP off cut the gateway's CPU per alert from about 10 µs to 8.5 µs with Redis and
//! raised the embedded store's throughput from about 5.5× to 6–7× Alertmanager's
//! (`cargo bench --bench ingest`). The gateway's working set is small and TLB misses
//! are not its cost, so huge pages bought it nothing in return.

/// The global allocator of the `tidegate` binary and of the benches that measure it.
pub type Allocator = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3.x's `mi_option_t` (`mimalloc.h`), which
/// `libmimalloc-sys` does not name.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Configures the allocator. Call first thing in `main`.
pub fn tune() {
    // SAFETY: sets a process-wide allocator option; mimalloc allows this at any
    // time, from any thread.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    // SAFETY: PR_SET_THP_DISABLE sets one flag on this process; it overrides the
    // MADV_HUGEPAGE that mimalloc gave its arenas before `main`, so it must be
    // prctl and not mimalloc's own option, which it reads only at start-up.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0)
    };
}
