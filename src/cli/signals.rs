//! Ctrl-C, SIGTERM and SIGHUP: a thread of its own waits for them (they are blocked in every
//! other thread), removes the temporary files of any write in progress
//! ([`crate::atomic::interrupt`]), and exits with 128 + the signal, as a shell expects.

use std::io::Write;

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
