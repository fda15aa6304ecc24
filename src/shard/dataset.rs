//! A dataset: one or more shards behind one global sample index.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Shard;
use super::dtype::TokenSlice;
use super::indexed::{IndexedShard, shard_paths};
use crate::error::{Error, Result};

/// Several shards seen as one: global sample i lives in the shard whose prefix sum of lengths
/// covers it.
///
/// | shard | sequences | global samples |
/// |---|---|---|
/// | a | 3 | 0, 1, 2 |
/// | b | 0 | — |
/// | c | 2 | 3, 4 |
#[derive(Clone, Debug)]
pub struct Dataset {
    shards: Vec<Arc<dyn Shard>>,
    /// `starts[k]` is the global index of shard k's first sample; the last entry is the total.
    starts: Vec<usize>,
}

impl Dataset {
    /// A dataset over `shards`, in order.
    pub fn from_shards(shards: Vec<Arc<dyn Shard>>) -> Self {
        let mut starts = Vec::with_capacity(shards.len() + 1);
        let mut total = 0;
        starts.push(0);
        for s in &shards {
            total += s.len();
            starts.push(total);
        }
        Dataset { shards, starts }
    }

    /// Opens the Megatron shards at `prefixes`, in order.
    ///
    /// # Errors
    ///
    /// The first shard's error from [`IndexedShard::open`].
    pub fn open<P: AsRef<Path>>(prefixes: &[P]) -> Result<Self> {
        let shards = prefixes
            .iter()
            .map(|p| IndexedShard::open(p).map(|s| Arc::new(s) as Arc<dyn Shard>))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_shards(shards))
    }

    /// Opens every Megatron shard in `dir` (each `NAME.idx` with a `NAME.bin` beside it), sorted
    /// by name.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyDirectory`] when there is none; [`Error::Io`]; a shard's open error.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open(&shard_prefixes(dir.as_ref())?)
    }

    /// The shards, in order.
    pub fn shards(&self) -> &[Arc<dyn Shard>] {
        &self.shards
    }

    /// Total samples over all shards.
    pub fn len(&self) -> usize {
        *self
            .starts
            .last()
            .expect("starts holds at least the leading 0")
    }

    /// Tokens over all shards.
    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(|s| s.tokens()).sum()
    }

    /// Whether the dataset holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The (shard, sample within shard) of global sample `i`.
    pub fn locate(&self, i: usize) -> Option<(usize, usize)> {
        if i >= self.len() {
            return None;
        }
        // The last shard whose start is <= i; empty shards share a start and are skipped.
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        Some((k, i - self.starts[k]))
    }

    /// Tells every shard's kernel read-ahead how samples will be read ([`Shard::advise`]).
    pub fn advise(&self, access: super::Access) {
        for s in &self.shards {
            s.advise(access);
        }
    }

    /// Prefetches global sample `i`'s index entries into the CPU caches
    /// ([`Shard::prefetch_entry`]).
    #[inline]
    pub fn prefetch_entry(&self, i: usize) {
        if let Some((k, j)) = self.locate(i) {
            self.shards[k].prefetch_entry(j);
        }
    }

    /// Asks the kernel to start reading global sample `i` ([`Shard::will_need`]).
    pub fn will_need(&self, i: usize) {
        if let Some((k, j)) = self.locate(i) {
            self.shards[k].will_need(j);
        }
    }

    /// Maps every shard's pages into this process now ([`Shard::populate`]).
    pub fn populate(&self) {
        for s in &self.shards {
            s.populate();
        }
    }

    /// Drops every shard's token data from the page cache ([`Shard::evict`]).
    ///
    /// # Errors
    ///
    /// The first shard's error.
    pub fn evict(&self) -> crate::Result<()> {
        self.shards.iter().try_for_each(|s| s.evict())
    }

    /// Global sample `i`, borrowed from its shard's map.
    pub fn get(&self, i: usize) -> Option<TokenSlice<'_>> {
        let (k, j) = self.locate(i)?;
        self.shards[k].get(j)
    }

    /// Tokens in global sample `i`, without touching token data.
    pub fn sequence_len(&self, i: usize) -> Option<usize> {
        let (k, j) = self.locate(i)?;
        self.shards[k].sequence_len(j)
    }
}

/// The prefixes of the Megatron shards in `dir` (each `NAME.idx` with a `NAME.bin` beside it,
/// and each shard whose write was killed while its pair was apart, which opening puts back
/// together or reports), sorted by name.
///
/// # Errors
///
/// [`Error::EmptyDirectory`] when there is none; [`Error::Io`] when `dir` cannot be listed.
pub fn shard_prefixes(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))?;
    let mut prefixes = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, "list", e))?.path();
        if path.extension().is_some_and(|e| e == "idx") {
            let prefix = path.with_extension("");
            if shard_paths(&prefix).1.is_file() {
                prefixes.push(prefix);
            }
        } else if let Some(prefix) = interrupted_prefix(&path) {
            // A shard whose write was killed while its pair was apart (`.NAME.idx.TAG.old`
            // beside it): opening puts the pair back, or names what is missing. Skipping it
            // would silently drop a shard from the dataset.
            prefixes.push(prefix);
        }
    }
    if prefixes.is_empty() {
        return Err(Error::EmptyDirectory {
            path: dir.to_path_buf(),
        });
    }
    prefixes.sort();
    prefixes.dedup();
    Ok(prefixes)
}

/// `dir/NAME` for a moved-aside `dir/.NAME.idx.TAG.old`, or a temporary `dir/.NAME.idx.TAG.tmp`
/// beside `NAME.bin`, whose `NAME.idx` is missing: a write killed while its pair was apart.
fn interrupted_prefix(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let hidden = name.strip_prefix('.')?;
    let (inner, temporary) = match hidden.strip_suffix(".old") {
        Some(inner) => (inner, false),
        None => (hidden.strip_suffix(".tmp")?, true),
    };
    let (stem, tag) = inner.rsplit_once('.')?;
    let shard = stem.strip_suffix(".idx")?;
    if tag.is_empty() || shard.is_empty() {
        return None;
    }
    let prefix = path.with_file_name(shard);
    let (idx, bin) = shard_paths(&prefix);
    (!idx.exists() && (!temporary || bin.is_file())).then_some(prefix)
}
