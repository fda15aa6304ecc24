//! Shards: on-disk token formats over memory maps, validation, and host decoding.
//!
//! - [`IndexedShard`] reads a Megatron-LM `PREFIX.idx` + `PREFIX.bin` pair, validated on open;
//!   [`IndexedWriter`] writes one atomically.
//! - [`FlatShard`] reads raw u16/u32 token files (nanoGPT's `train.bin`) as fixed windows.
//! - [`Dataset`] puts several shards behind one global sample index.
//! - [`TokenSlice::decode_into`] copies a sequence's ids into a caller's `&mut [i32]`,
//!   `&mut [i64]` or `&mut [u32]`, with no allocation.
//! - Class files and range partition files beside shards ([`read_class_file`],
//!   [`read_classes_beside`], [`RangeFile`]) read into plain data for [`crate::order`].
//! - [`synthetic`] writes the built-in deterministic corpus that `shardflow demo` and the
//!   benchmarks use.
//! - [`Trailer`]: the integrity trailer that ties a written `.idx` to its `.bin`, and its format
//!   ([`TRAILER_MAGIC`], [`TRAILER_LEN`]).

mod dataset;
mod dtype;
mod flat;
mod indexed;
mod sidecar;
pub mod synthetic;
mod trailer;
mod writer;

pub use dataset::*;
pub use dtype::*;
pub use flat::*;
pub use indexed::*;
pub use sidecar::*;
pub use trailer::{TRAILER_LEN, TRAILER_MAGIC, Trailer};
pub use writer::*;

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// A source of token sequences with random access: a Megatron shard, a flat token file, or
/// anything else that can lend a sequence's bytes.
pub trait Shard: Send + Sync + std::fmt::Debug {
    /// Number of sequences (samples).
    fn len(&self) -> usize;

    /// Whether the shard holds no sequence.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence `i`, borrowed from the map, or `None` past the end.
    fn get(&self, i: usize) -> Option<TokenSlice<'_>>;

    /// Tokens in sequence `i`; cheaper than [`Shard::get`] where an index stores lengths.
    fn sequence_len(&self, i: usize) -> Option<usize> {
        self.get(i).map(|s| s.len())
    }

    /// Tokens over all sequences (by default a pass over the lengths).
    fn tokens(&self) -> u64 {
        (0..self.len())
            .map(|i| self.sequence_len(i).unwrap_or(0) as u64)
            .sum()
    }

    /// The file that names this shard in errors and reports.
    fn path(&self) -> &Path;

    /// The stored id type.
    fn dtype(&self) -> Dtype;

    /// Tells the kernel how the sequences will be read (its read-ahead follows): hints only,
    /// never a change to what is read. Nothing by default.
    fn advise(&self, _access: Access) {}

    /// Asks the CPU to bring sequence `i`'s index entries into its caches (a software
    /// prefetch, ahead of a [`Shard::get`] of `i`). Nothing by default.
    fn prefetch_entry(&self, _i: usize) {}

    /// Asks the kernel to start reading sequence `i` into the page cache now
    /// (`MADV_WILLNEED`), so that a later read finds it there. Nothing by default.
    fn will_need(&self, _i: usize) {}

    /// Maps every page of the shard's token data into this process now, reading what the page
    /// cache lacks (`MADV_POPULATE_READ`, or a read of each page where the kernel lacks it), so
    /// that timed reads measure the steady state rather than first-touch faults. Nothing by
    /// default.
    fn populate(&self) {}

    /// Drops the shard's token data from the page cache (for cold-cache measurements): this
    /// process's mapped pages, then the file's cached pages (`POSIX_FADV_DONTNEED`). Later
    /// reads fault it back in from disk.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Io`] naming the file.
    fn evict(&self) -> crate::Result<()> {
        Ok(())
    }
}

/// How a loader reads a shard's sequences, as the kernel's read-ahead is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// In an order unrelated to their place (a full shuffle): no read-ahead.
    Random,
    /// In file order (no shuffle): aggressive read-ahead.
    Sequential,
    /// The kernel's default.
    Normal,
}

/// [`Shard::advise`] on a map.
pub(crate) fn advise_map(map: &memmap2::Mmap, access: Access) {
    let advice = match access {
        Access::Random => memmap2::Advice::Random,
        Access::Sequential => memmap2::Advice::Sequential,
        Access::Normal => memmap2::Advice::Normal,
    };
    // A hint the kernel may refuse (a file system without it): nothing is lost.
    let _ = map.advise(advice);
}

/// [`Shard::will_need`] for `len` bytes at `start` of a map.
pub(crate) fn will_need_range(map: &memmap2::Mmap, start: usize, len: usize) {
    if len > 0 {
        let _ = map.advise_range(memmap2::Advice::WillNeed, start, len);
    }
}

/// [`Shard::populate`] for a whole map.
pub(crate) fn populate_map(map: &memmap2::Mmap) {
    #[cfg(target_os = "linux")]
    let populated = map.advise(memmap2::Advice::PopulateRead).is_ok();
    #[cfg(not(target_os = "linux"))]
    let populated = false;
    if !populated {
        // A kernel before Linux 5.14, or another system: touch one byte per page instead.
        let sum = map
            .iter()
            .step_by(4096)
            .fold(0u8, |a, &b| a.wrapping_add(b));
        std::hint::black_box(sum);
    }
}

/// [`Shard::evict`] for `map`, the whole of the file at `path`.
pub(crate) fn evict_map(map: &memmap2::Mmap, path: &Path) -> crate::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the map is read-only and file-backed: dropping this process's pages only makes
    // the next read fault them in again from the file, with the same bytes.
    unsafe {
        let _ = map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed);
    }
    let file = std::fs::File::open(path).map_err(|e| crate::Error::io(path, "open", e))?;
    // SAFETY: a valid descriptor; the call only drops clean cached pages.
    let code = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if code != 0 {
        return Err(crate::Error::io(
            path,
            "drop from the page cache",
            std::io::Error::from_raw_os_error(code),
        ));
    }
    Ok(())
}

/// Sequence length statistics, as `shardflow inspect` prints them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LengthStats {
    /// Number of sequences.
    pub sequences: u64,
    /// Total tokens.
    pub tokens: u64,
    /// Shortest sequence.
    pub min: u64,
    /// Mean length.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: u64,
    /// 95th percentile (nearest rank).
    pub p95: u64,
    /// Longest sequence.
    pub max: u64,
}

impl LengthStats {
    /// Statistics over `lengths` (any order). Percentiles are nearest-rank: the smallest length
    /// with at least q of the sequences at or below it.
    pub fn from_lengths(mut lengths: Vec<u64>) -> Self {
        if lengths.is_empty() {
            return LengthStats::default();
        }
        lengths.sort_unstable();
        let n = lengths.len();
        let rank = |q: f64| lengths[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let tokens: u64 = lengths.iter().sum();
        LengthStats {
            sequences: n as u64,
            tokens,
            min: lengths[0],
            mean: tokens as f64 / n as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            max: lengths[n - 1],
        }
    }

    /// Statistics over every sequence of `shard`.
    pub fn of(shard: &dyn Shard) -> Self {
        let lengths = (0..shard.len()).map(|i| shard.sequence_len(i).unwrap_or(0) as u64);
        Self::from_lengths(lengths.collect())
    }
}

/// The name a shard prefix gives its dataset: its file name (`data/web` → `web`).
pub(crate) fn prefix_name(prefix: &Path) -> String {
    resolve_prefix(prefix)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Maps `path` read-only.
fn map_file(path: &Path) -> Result<Mmap> {
    // Check the type first: opening a named pipe would block until a writer appears.
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, "open", e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_path_buf(),
            found: crate::atomic::describe(&meta),
        });
    }
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    // SAFETY: the map is read-only and shardflow never writes shard files in place (its writer
    // renames new files over old ones, leaving existing maps on the old inode). Another process
    // truncating a mapped file would fault reads; that is the contract of every mmap reader,
    // Megatron's and numpy's included, and is documented in the README.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, "map", e))
}
