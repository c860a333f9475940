//! Child processes of the test binaries (redis-servers, Prometheus, Alertmanager):
//! spawning them so that they never outlive the test binary, free ports, scratch
//! dirs, and reading their logs. Used by [`crate::redis`], [`crate::kube`] and the
//! tests' `support/senders/`. Each test or bench binary links its own copy, so the
//! registry and the exit hook below are per binary.
//!
//! Lifecycle (why there are three mechanisms):
//! * the owners' `Drop` kills a child (SIGKILL, then reaps it) and removes its temp dir;
//! * statics are never dropped, so a shared server and anything leaked would outlive
//!   the test binary: a `libc::atexit` hook kills every child this process started (a
//!   global pid registry) and removes their temp dirs. libtest leaves `main` through
//!   `exit()` whether tests pass or fail, so the hook runs;
//! * atexit does not run if the test binary is killed by a signal or aborts, so every
//!   child also gets `PR_SET_PDEATHSIG(SIGKILL)` as a backstop. PDEATHSIG fires when
//!   the *thread* that forked the child exits, and libtest runs each test on a
//!   short-lived thread, so children are forked by one dedicated helper thread that
//!   lives as long as the process (see [`spawn`]).
#![allow(dead_code)]

use std::fs;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, LazyLock, Mutex, MutexGuard, Once, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Ports are drawn from 20000..30000, below the kernel's ephemeral range
/// (32768..60999 by default), so nothing in this machine is handed one of them for an
/// outgoing connection or a `bind(:0)` between our "is it free?" check and the child
/// binding it, or between stopping a server and starting it again on the same port.
/// A second port at an offset (Redis' cluster bus, at +10000) lands in 30000..40000
/// and is checked as well.
const PORT_LOW: u16 = 20000;
const PORT_SPAN: u16 = 10000;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the long-lived "child-spawner" thread, with
/// `PR_SET_PDEATHSIG(SIGKILL)`, and registers the child for the atexit hook. The
/// owner calls [`unregister_pid`] once it has killed and reaped the child.
///
/// Why a dedicated thread: Linux delivers PDEATHSIG when the *thread* that forked the
/// child exits, not the process. Tests run on libtest threads that exit when the test
/// ends, which would kill a shared server (and any child handed to another test)
/// under the next test's feet. The spawner thread is only fed through a channel whose
/// sender lives in a static, so it never exits before the process does — and then the
/// children die with it even if atexit never ran (SIGKILL, abort, panic=abort).
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    ensure_exit_hook();
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec; only async-signal-safe calls
    // (prctl, getppid, _exit) and no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // If the parent died between fork and prctl we have already been
            // reparented and the signal will never come: don't start orphaned.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let result = cmd.spawn();
                    if let Ok(child) = &result {
                        // Registered before the requester even sees it, so no window
                        // in which an exiting process would forget it.
                        register_pid(child.id());
                    }
                    let _ = reply.send(result);
                }
            })
            .expect("start child-spawner thread");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner.send((cmd, reply_tx)).expect("child-spawner thread is gone");
    reply_rx.recv().expect("child-spawner thread is gone")
}

/// SIGKILLs and reaps `child`, and forgets it. Errors mean it already exited (or the
/// atexit hook reaped it): fine.
pub fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
    unregister_pid(child.id());
}

/// Children and temp dirs that the atexit hook must clean up, and what it must do first.
struct Registry {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
    before_exit: Vec<fn()>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { pids: Vec::new(), dirs: Vec::new(), before_exit: Vec::new() });

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register_pid(pid: u32) {
    registry().pids.push(pid);
}

pub fn unregister_pid(pid: u32) {
    registry().pids.retain(|&p| p != pid);
}

pub fn register_dir(dir: &Path) {
    ensure_exit_hook();
    registry().dirs.push(dir.to_owned());
}

pub fn unregister_dir(dir: &Path) {
    registry().dirs.retain(|d| d != dir);
}

/// Runs `hook` at exit, before the children are killed (e.g. a report that still
/// needs a server). Registering the same hook twice runs it once.
pub fn before_exit(hook: fn()) {
    ensure_exit_hook();
    let mut reg = registry();
    if !reg.before_exit.contains(&hook) {
        reg.before_exit.push(hook);
    }
}

fn ensure_exit_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` that never unwinds.
        let rc = unsafe { libc::atexit(at_exit) };
        assert_eq!(rc, 0, "atexit registration failed");
    });
}

/// Runs when the test binary exits: runs the [`before_exit`] hooks, then kills and
/// reaps every child still registered and removes the temp dirs (a shared server's,
/// and any leaked child's).
extern "C" fn at_exit() {
    // try_lock: a thread still running at exit could hold the lock forever; then
    // PDEATHSIG is what stops the children, and the dirs stay behind.
    let hooks = match REGISTRY.try_lock() {
        Ok(guard) => guard.before_exit.clone(),
        Err(TryLockError::Poisoned(p)) => p.into_inner().before_exit.clone(),
        Err(TryLockError::WouldBlock) => Vec::new(),
    };
    for hook in hooks {
        // Unwinding out of an `extern "C"` fn aborts; a failing hook must not stop
        // the cleanup, nor turn a passing run into a crash.
        let _ = std::panic::catch_unwind(hook);
    }
    let _ = std::panic::catch_unwind(|| {
        let mut reg = match REGISTRY.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        for pid in reg.pids.drain(..) {
            // SAFETY: plain syscalls on pids of our own unreaped children.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        for dir in reg.dirs.drain(..) {
            let _ = fs::remove_dir_all(dir);
        }
    });
}

/// A free port in 20000..30000 (and, with `also_free_at`, a free second port at that
/// offset). Each process walks the range from a random offset, so parallel test
/// binaries (other engineers' runs, other `cargo test` invocations) rarely even try
/// the same port; the bind check and the owners' "address already in use" retries
/// handle the rest.
pub fn pick_port(also_free_at: Option<u16>) -> u16 {
    static CURSOR: LazyLock<AtomicU32> =
        LazyLock::new(|| AtomicU32::new(RandomState::new().build_hasher().finish() as u32));
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..PORT_SPAN {
        let port = PORT_LOW + (CURSOR.fetch_add(1, Ordering::Relaxed) % u32::from(PORT_SPAN)) as u16;
        if free(port) && also_free_at.is_none_or(|offset| free(port + offset)) {
            return port;
        }
    }
    panic!("no free port in {PORT_LOW}..{}", PORT_LOW + PORT_SPAN);
}

/// A temp dir for one child, registered for removal at exit. Dirs are named
/// `tidegate-proc-<pid>-*` so that the first one a process makes can sweep away those
/// of earlier test binaries that were SIGKILLed (no atexit, no Drop): any whose pid no
/// longer exists. A live process's dirs are never touched.
pub fn scratch_dir() -> TempDir {
    const PREFIX: &str = "tidegate-proc-";
    static SWEEP: Once = Once::new();
    let tmp = std::env::temp_dir();
    SWEEP.call_once(|| {
        let Ok(entries) = fs::read_dir(&tmp) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX)?.split('-').next()?.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir_in(tmp)
        .expect("create temp dir for a child process")
}

/// Calls `f` every `interval` until it returns `Some`, or returns `None` after `timeout`.
pub fn poll_until<T>(timeout: Duration, interval: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(interval);
    }
}

/// The last `max` bytes of `text` or a little less (never splitting a character).
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The file's contents from byte `offset` on (lossy UTF-8), or "" if unreadable.
pub fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut bytes);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
