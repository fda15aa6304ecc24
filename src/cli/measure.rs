//! Measurements that `shardflow bench` and the benchmarks report beside loader throughput: the
//! memcpy bandwidth of this machine (the roofline) and the CPU time of this process.

use std::time::{Duration, Instant};

/// Bytes per second of a plain copy of `src` into buffers allocated (and touched) beforehand,
/// split over `threads` threads; the best of `passes` passes. Give it more bytes than the caches
/// hold to measure memory bandwidth.
pub fn memcpy_bandwidth(src: &[&[u8]], threads: usize, passes: usize) -> f64 {
    let threads = threads.max(1);
    let parts: Vec<&[u8]> = src
        .iter()
        .flat_map(|s| s.chunks(s.len().div_ceil(threads).max(1)))
        .collect();
    let bytes: usize = parts.iter().map(|p| p.len()).sum();
    let mut dsts: Vec<Vec<u8>> = parts.iter().map(|p| vec![1u8; p.len()]).collect();
    let mut best = Duration::MAX;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        std::thread::scope(|s| {
            for (part, dst) in parts.iter().zip(dsts.iter_mut()) {
                s.spawn(move || {
                    dst.copy_from_slice(part);
                    std::hint::black_box(&dst);
                });
            }
        });
        best = best.min(start.elapsed());
    }
    bytes as f64 / best.as_secs_f64()
}

/// User plus system CPU time of this process so far (getrusage).
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage through the pointer; RUSAGE_SELF is always valid,
    // and the zeroed value is a valid rusage should it not.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Bytes free for an unprivileged user on the file system holding `dir` (statvfs), or `None`
/// when it cannot be told.
pub fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a valid NUL-terminated string and `st` a valid out-pointer; the zeroed
    // value is only read when statvfs reports success.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
