//! Ctrl-C, SIGTERM and SIGHUP: a thread of its own waits for them (they are blocked in every
//! other thread), removes the temporary files of any write in progress
//! ([`crate::atomic::interrupt`]), and exits with 128 + the signal, as a shell expects.
//!
//! `shardflow launch` supervises instead ([`supervise`]): the thread passes each signal on to
//! the ranks' process groups and records it ([`received`]), and the launcher waits for its ranks,
//! removes what it made and exits itself.

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// Process groups of children (`shardflow launch`): a signal is passed on to them before the
/// command exits, so no rank outlives its launcher.
static GROUPS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Whether a supervisor (the launcher) ends the command after a signal, not the signal thread.
static SUPERVISED: AtomicBool = AtomicBool::new(false);

/// The first signal received while supervised (0: none).
static FIRST: AtomicI32 = AtomicI32::new(0);

/// Signals received while supervised.
static COUNT: AtomicUsize = AtomicUsize::new(0);

/// Passes the signals this command receives on to the process group `pgid`; a signal received
/// before (while supervised) is passed on now, so a group registered late misses none.
pub fn forward_to(pgid: libc::pid_t) {
    let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    groups.push(pgid);
    let first = FIRST.load(Ordering::SeqCst);
    if first != 0 {
        signal_group(pgid, first);
    }
}

/// From now on a signal does not end the command: it is passed on to the groups of
/// [`forward_to`] and recorded for [`received`] and [`count`]; the caller must end the command.
pub fn supervise() {
    SUPERVISED.store(true, Ordering::SeqCst);
}

/// The first signal received since [`supervise`].
pub fn received() -> Option<libc::c_int> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// How many signals were received since [`supervise`] (a second Ctrl-C means "now").
pub fn count() -> usize {
    COUNT.load(Ordering::SeqCst)
}

/// Signals every process of group `pgid`.
pub fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory effects; a group that is gone makes it fail harmlessly.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Lets a child started by `cmd` receive the signals this process blocks (a signal mask is
/// inherited across exec), in a process group of its own.
pub fn child_gets_signals(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    // SAFETY: between fork and exec the closure only calls sigemptyset, sigaddset and
    // pthread_sigmask on a local set: no allocation, no locks (async-signal-safe).
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// Blocks the signals in this thread (and so in every thread it starts) and starts the thread
/// that waits for them. Call it first thing in `main`.
pub fn install() {
    // SAFETY: sigset_t is plain data, initialized by sigemptyset before use; pthread_sigmask and
    // sigwait take valid pointers to it. Blocking the signals only changes how they arrive.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let spawned = std::thread::Builder::new()
        .name("shardflow-signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` lives in this closure; `sig` is a valid out-pointer.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                {
                    // Recorded under the lock, so `forward_to` passes it on to a group
                    // registered after this, and to every group once.
                    let groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
                    for pgid in groups.iter() {
                        signal_group(*pgid, sig);
                    }
                    if SUPERVISED.load(Ordering::SeqCst) {
                        let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                        COUNT.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                }
                let removed = crate::atomic::interrupt();
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "\ninterrupted by signal {sig}; removed {removed} temporary file(s)"
                );
                std::process::exit(128 + sig);
            }
        });
    if spawned.is_err() {
        // No handler thread: let the signals act as they would have.
        // SAFETY: as above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}
