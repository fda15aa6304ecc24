//! Shards: on-disk token formats over memory maps, validation, and host decoding.
//!
//! - [`IndexedShard`] reads a Megatron-LM `PREFIX.idx` + `PREFIX.bin` pair, validated on open;
//!   [`IndexedWriter`] writes one atomically.
//! - [`FlatShard`] reads raw u16/u32 token files (nanoGPT's `train.bin`) as fixed windows.
//! - [`Dataset`] puts several shards behind one global sample index.
//! - [`TokenSlice::decode_into`] copies a sequence's ids into a caller's `&mut [i32]`,
//!   `&mut [i64]` or `&mut [u32]`, with no allocation.
//! - [`synthetic`] writes the built-in deterministic corpus that `shardflow demo` and the
//!   benchmarks use.
//! - [`trailer`]: the integrity trailer that ties a written `.idx` to its `.bin`.

mod dataset;
mod dtype;
mod flat;
mod indexed;
pub mod synthetic;
pub mod trailer;
mod writer;

pub use dataset::*;
pub use dtype::*;
pub use flat::*;
pub use indexed::*;
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
pub fn prefix_name(prefix: &Path) -> String {
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
