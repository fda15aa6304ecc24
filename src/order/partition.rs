//! Rank partitions: which samples of a dataset a rank may draw.
//!
//! In the default global mode every rank sees all samples and takes its rows of each global
//! batch. The ownership modes give rank r of W a fixed subset, for data locality:
//!
//! | mode | rank r owns (N samples, W ranks) |
//! |---|---|
//! | contiguous | `r*N/W .. (r+1)*N/W` |
//! | strided | `r, r+W, r+2W, …` |
//! | hashed | `π(j)` for `j` in `r*N/W .. (r+1)*N/W`, where `π` is a keyed permutation of `[0, N)` (keyed by the dataset's name, not the seed) |
//!
//! Every rank's share is computed in O(1) time and memory from (N, W, r), whatever the sizes:
//! nothing is allocated per rank or per sample. Shares differ by at most one sample.

use super::shuffle::Permutation;
use crate::error::{Error, Result};

/// How samples are divided among ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Every rank plans the same global batch and takes rows `r*B .. (r+1)*B` (elastic).
    Global,
    /// Rank r owns a contiguous range of samples.
    Contiguous,
    /// Rank r owns every W-th sample, starting at r.
    Strided,
    /// Rank r owns a pseudo-random, fixed share of the samples (a contiguous range of a keyed
    /// permutation).
    Hashed,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Partition::Global => "global",
            Partition::Contiguous => "contiguous",
            Partition::Strided => "strided",
            Partition::Hashed => "hashed",
        })
    }
}

/// The samples of one dataset that one rank draws from, indexed `0..len`.
#[derive(Clone, Debug)]
pub(crate) enum View {
    /// `start .. start + len`.
    Range { start: u64, len: u64 },
    /// `first, first + stride, …`, `len` of them.
    Strided { first: u64, stride: u64, len: u64 },
    /// `perm(start), perm(start + 1), …`, `len` of them.
    Permuted {
        perm: Permutation,
        start: u64,
        len: u64,
    },
}

impl View {
    pub fn len(&self) -> u64 {
        match self {
            View::Range { len, .. } | View::Strided { len, .. } | View::Permuted { len, .. } => {
                *len
            }
        }
    }

    /// The dataset sample at view index `j`.
    #[inline]
    pub fn sample(&self, j: u64) -> u64 {
        match self {
            View::Range { start, .. } => start + j,
            View::Strided { first, stride, .. } => first + j * stride,
            View::Permuted { perm, start, .. } => perm.apply(start + j),
        }
    }
}

/// How one dataset of `n` samples divides among `world` ranks: every rank's [`View`] in O(1).
#[derive(Clone, Debug)]
pub(crate) struct Split {
    partition: Partition,
    n: u64,
    world: u64,
    /// The hashed mode's permutation.
    perm: Option<Permutation>,
}

/// The salt of the hashed partition's permutation (epoch and seed play no part: ownership is
/// the same in every epoch and for every seed, which is the point of owning samples).
const OWNER_SALT: u64 = 0x6f77_6e65;

impl Split {
    /// The split of dataset `dataset` (`n` samples, keyed by `stream`) among `world` ranks.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyPartition`] when some rank would own no sample.
    pub fn new(
        partition: Partition,
        dataset: &str,
        stream: u64,
        n: u64,
        world: usize,
    ) -> Result<Self> {
        let w = world as u64;
        let split = Split {
            partition,
            n,
            world: w,
            perm: (partition == Partition::Hashed)
                .then(|| Permutation::keyed(n, 0, stream, 0, OWNER_SALT)),
        };
        if partition != Partition::Global && n < w {
            // Contiguous and hashed shares are r*N/W .. (r+1)*N/W: rank 0 is empty first.
            // Strided: rank r owns samples only when r < N.
            let rank = if partition == Partition::Strided {
                n as usize
            } else {
                0
            };
            return Err(Error::EmptyPartition {
                dataset: dataset.to_string(),
                size: n,
                world,
                rank,
                partition: partition.to_string(),
            });
        }
        Ok(split)
    }

    /// The view of rank `rank` (ignored in the global mode).
    pub fn view(&self, rank: usize) -> View {
        let (n, w, r) = (self.n as u128, self.world as u128, rank as u128);
        let share = || {
            let (a, b) = ((r * n / w) as u64, ((r + 1) * n / w) as u64);
            (a, b - a)
        };
        match self.partition {
            Partition::Global => View::Range {
                start: 0,
                len: self.n,
            },
            Partition::Contiguous => {
                let (start, len) = share();
                View::Range { start, len }
            }
            Partition::Strided => View::Strided {
                first: rank as u64,
                stride: self.world,
                len: (n.saturating_sub(r)).div_ceil(w) as u64,
            },
            Partition::Hashed => {
                let (start, len) = share();
                View::Permuted {
                    perm: self
                        .perm
                        .clone()
                        .expect("a hashed split holds its permutation"),
                    start,
                    len,
                }
            }
        }
    }

    /// The smallest share any rank has.
    pub fn min_len(&self) -> u64 {
        match self.partition {
            Partition::Global => self.n,
            _ => self.n / self.world,
        }
    }
}
