//! Measurements that `shardflow bench` and the benchmarks report beside loader throughput: the
//! memcpy bandwidth of this machine (the roofline) and the CPU time of this process.

use std::time::{Duration, Instant};

/// A memcpy bandwidth measurement: the best of several timed copies, and how far the others
/// fell from it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Bandwidth {
    /// Bytes per second of the fastest copy.
    pub best: f64,
    /// Bytes per second of the median copy.
    pub median: f64,
    /// Bytes per second of the slowest copy.
    pub worst: f64,
    /// `(best - worst) / best`: 0 when every copy took as long, below 1 always.
    pub spread: f64,
    /// Copies timed.
    pub runs: usize,
    /// Bytes each copy moved.
    pub bytes: usize,
    /// Threads the copy was split over.
    pub threads: usize,
}

/// The largest CPU cache (the last level) in bytes, as Linux reports it; `None` elsewhere.
pub fn last_level_cache() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| {
            let size = std::fs::read_to_string(e.ok()?.path().join("size")).ok()?;
            let size = size.trim();
            let (n, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
            let n: usize = n.parse().ok()?;
            Some(match unit {
                "K" => n << 10,
                "M" => n << 20,
                "G" => n << 30,
                _ => n,
            })
        })
        .max()
}

/// The default cap on each roofline buffer ([`memcpy_roofline`]): 256 MiB, two of them.
pub const ROOFLINE_BYTES: usize = 256 << 20;

/// The memcpy roofline of this machine for `threads` threads, with buffers of at most
/// [`ROOFLINE_BYTES`]: [`memcpy_roofline_within`].
pub fn memcpy_roofline(threads: usize) -> Bandwidth {
    memcpy_roofline_within(threads, ROOFLINE_BYTES)
}

/// The memcpy roofline of this machine for `threads` threads: copies between two anonymous
/// buffers, written once beforehand so that no copy takes a page fault, each four times the
/// last-level cache, at least 256 MiB and at most `max_bytes` (the cap wins), split over
/// `threads` threads; 9 copies timed. Unlike a copy of a shard's mapped bytes it measures
/// neither page faults nor the residency of the corpus, so it does not depend on the corpus or
/// on what ran before. Buffers that the last-level cache can hold a good part of (a virtual
/// machine may report its host's whole cache) measure partly the cache's bandwidth.
pub fn memcpy_roofline_within(threads: usize, max_bytes: usize) -> Bandwidth {
    let llc = last_level_cache().unwrap_or(32 << 20);
    let bytes = llc.saturating_mul(4).max(256 << 20).min(max_bytes.max(1));
    memcpy_bandwidth(bytes, threads, 9)
}

/// Bytes per second of `runs` copies of `bytes` bytes between pre-faulted anonymous buffers,
/// split over `threads` threads.
pub fn memcpy_bandwidth(bytes: usize, threads: usize, runs: usize) -> Bandwidth {
    let threads = threads.max(1);
    let chunk = bytes.div_ceil(threads).max(4096);
    // A non-zero fill writes every page before timing (a zeroed allocation may map the shared
    // zero page and fault on first write).
    let src: Vec<Vec<u8>> = (0..threads).map(|t| vec![t as u8 | 1; chunk]).collect();
    let mut dst: Vec<Vec<u8>> = (0..threads).map(|_| vec![2u8; chunk]).collect();
    let mut rates: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for (from, to) in src.iter().zip(dst.iter_mut()) {
                    s.spawn(move || {
                        to.copy_from_slice(from);
                        std::hint::black_box(&to);
                    });
                }
            });
            (chunk * threads) as f64 / start.elapsed().as_secs_f64().max(1e-9)
        })
        .collect();
    rates.sort_by(|a, b| b.total_cmp(a));
    let (best, worst) = (rates[0], rates[rates.len() - 1]);
    Bandwidth {
        best,
        median: rates[rates.len() / 2],
        worst,
        spread: (best - worst) / best,
        runs: rates.len(),
        bytes: chunk * threads,
        threads,
    }
}

/// Major page faults (pages read from disk) of this process so far (getrusage).
pub fn major_faults() -> u64 {
    rusage().ru_majflt as u64
}

fn rusage() -> libc::rusage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage through the pointer; RUSAGE_SELF is always valid,
    // and the zeroed value is a valid rusage should it not.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    }
}

/// User plus system CPU time of this process so far (getrusage).
pub fn cpu_time() -> Duration {
    let usage = rusage();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bandwidth_measurement_is_positive_finite_ordered_and_bounded_in_spread() {
        for threads in [1, 2, 3] {
            let b = memcpy_bandwidth(8 << 20, threads, 5);
            assert!(b.worst > 0.0 && b.best.is_finite(), "{b:?}");
            assert!(b.best >= b.median && b.median >= b.worst, "{b:?}");
            assert!((0.0..1.0).contains(&b.spread), "{b:?}");
            assert_eq!((b.runs, b.threads), (5, threads));
            assert!(b.bytes >= 8 << 20);
        }
        assert!(last_level_cache().is_none_or(|c| c >= 1 << 10));
    }
}
