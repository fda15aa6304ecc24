//! Ctrl-C, SIGTERM and SIGHUP: a thread of its own waits for them (they are blocked in every
//! other thread), removes the temporary files of any write in progress
//! ([`crate::atomic::interrupt`]), and exits with 128 + the signal, as a shell expects.

use std::io::Write;
use std::sync::Mutex;

/// Process groups of children (`shardflow launch`): a signal is passed on to them before the
/// command exits, so no rank outlives its launcher.
static GROUPS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// Passes the signals this command receives on to the process group `pgid`.
pub fn forward_to(pgid: libc::pid_t) {
    GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
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
                for pgid in GROUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    signal_group(*pgid, sig);
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
