//! Rank partitions: which samples of a dataset a rank may draw.
//!
//! In the default global mode every rank sees all samples and takes its rows of each global
//! batch. The ownership modes give rank r of W a fixed subset, for data locality:
//!
//! | mode | rank r owns (N samples, W ranks) |
//! |---|---|
//! | contiguous | `r*N/W .. (r+1)*N/W` |
//! | strided | `r, r+W, r+2W, …` |
//! | hashed | the samples i with `mix64(i) % W == r` |

use super::shuffle::mix64;
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
    /// Rank r owns the samples whose hashed index falls to it.
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
    /// An explicit sorted list.
    List(Vec<u64>),
}

impl View {
    pub fn len(&self) -> u64 {
        match self {
            View::Range { len, .. } | View::Strided { len, .. } => *len,
            View::List(v) => v.len() as u64,
        }
    }

    /// The dataset sample at view index `j`.
    #[inline]
    pub fn sample(&self, j: u64) -> u64 {
        match self {
            View::Range { start, .. } => start + j,
            View::Strided { first, stride, .. } => first + j * stride,
            View::List(v) => v[j as usize],
        }
    }
}

/// The views of every rank (`[rank]`) on a dataset of `n` samples named `dataset`.
///
/// # Errors
///
/// [`Error::EmptyPartition`] when some rank would own no sample.
pub(crate) fn views(
    partition: Partition,
    dataset: &str,
    n: u64,
    world: usize,
) -> Result<Vec<View>> {
    let w = world as u64;
    let views: Vec<View> = match partition {
        Partition::Global => vec![View::Range { start: 0, len: n }],
        Partition::Contiguous => (0..w)
            .map(|r| {
                let (a, b) = (r * n / w, (r + 1) * n / w);
                View::Range {
                    start: a,
                    len: b - a,
                }
            })
            .collect(),
        Partition::Strided => (0..w)
            .map(|r| View::Strided {
                first: r,
                stride: w,
                len: n.saturating_sub(r).div_ceil(w),
            })
            .collect(),
        Partition::Hashed => {
            let mut lists = vec![Vec::new(); world];
            for i in 0..n {
                lists[(mix64(i ^ 0x6f77_6e65) % w) as usize].push(i);
            }
            lists.into_iter().map(View::List).collect()
        }
    };
    if let Some(rank) = views.iter().position(|v| v.len() == 0) {
        return Err(Error::EmptyPartition {
            dataset: dataset.to_string(),
            size: n,
            world,
            rank,
            partition: partition.to_string(),
        });
    }
    Ok(views)
}
