//! Child processes of the test binaries (redis-server, etcd, kube-apiserver), and
//! making sure none outlives the binary that started it.
//!
//! * `Drop` of a server handle kills it;
//! * statics are never dropped, so shared servers would outlive the test binary: a
//!   `libc::atexit` hook kills every child this process started (a global pid
//!   registry) and removes their temp dirs. libtest leaves `main` through `exit()`
//!   whether tests pass or fail, so the hook runs;
//! * atexit does not run if the test binary is killed by a signal or aborts, so every
//!   child also gets `PR_SET_PDEATHSIG(SIGKILL)` as a backstop (see [`spawn`]).

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{mpsc, Mutex, MutexGuard, Once, OnceLock, PoisonError, TryLockError};
use std::thread;

/// Run by the atexit hook before children are killed, e.g. reports that still need
/// them.
static HOOKS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Runs `hook` when the test binary exits, before its children are killed.
pub fn on_exit(hook: fn()) {
    ensure_exit_hook();
    HOOKS.lock().unwrap_or_else(PoisonError::into_inner).push(hook);
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` from the long-lived "child-spawner" thread, with
/// `PR_SET_PDEATHSIG(SIGKILL)`, and registers the child for the atexit hook.
///
/// Why a dedicated thread: Linux delivers PDEATHSIG when the *thread* that forked the
/// child exits, not the process. Tests run on libtest threads that exit when the test
/// ends, which would kill the shared server (and any server handed to another test)
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

/// Children and temp dirs that the atexit hook must clean up.
struct Registry {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { pids: Vec::new(), dirs: Vec::new() });

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn register_pid(pid: u32) {
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

pub fn ensure_exit_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain `extern "C" fn` that never unwinds.
        let rc = unsafe { libc::atexit(at_exit) };
        assert_eq!(rc, 0, "atexit registration failed");
    });
}

/// Runs when the test binary exits: runs the exit hooks (reports), then kills and
/// reaps every child still registered and removes the temp dirs (shared servers',
/// and any leaked server's).
extern "C" fn at_exit() {
    // Unwinding out of an `extern "C"` fn aborts; a failing report must not stop the
    // cleanup, nor turn a passing run into a crash.
    let hooks: Vec<fn()> = HOOKS.try_lock().map(|h| h.clone()).unwrap_or_default();
    for hook in hooks {
        let _ = std::panic::catch_unwind(hook);
    }
    let _ = std::panic::catch_unwind(|| {
        // try_lock: a thread still running at exit could hold the lock forever; then
        // PDEATHSIG is what stops the children, and the dirs stay behind.
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
