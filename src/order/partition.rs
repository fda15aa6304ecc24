//! Rank partitions: which samples of a dataset a rank may draw.
//!
//! In the default global mode every rank sees all samples and takes its rows of each global
//! batch. The ownership modes give rank r of W a fixed subset, for data locality:
//!
//! | mode | rank r owns (N samples, W ranks) | memory | input |
//! |---|---|---|---|
//! | global (elastic) | rows `r*B .. (r+1)*B` of every global batch, drawn from all N | O(1) | none |
//! | contiguous | `r*N/W .. (r+1)*N/W` | O(1) | none |
//! | strided | `r, r+W, r+2W, …` | O(1) | none |
//! | hashed | `π(j)` for `j` in `r*N/W .. (r+1)*N/W`, where `π` is a keyed permutation of `[0, N)` (keyed by the dataset's name, not the seed) | O(1) | none |
//! | range | the sample ranges the user gives it ([`RankRanges`]: a shard per host, pre-computed splits) | O(ranges) | ranges per rank |
//! | stratified | every W-th sample of the samples sorted by class (then index), starting at r: each class in the global proportion, within one sample | 8 bytes per owned sample | a class per sample ([`Classes`]) |
//!
//! Contiguous, strided and hashed shares are computed in O(1) time and memory from (N, W, r);
//! shares differ by at most one sample. A range share is what the user gives, checked: ranges
//! inside the dataset, no sample owned twice, every sample owned unless
//! [`RankRanges::allow_gaps`], no rank empty. A stratified share is listed once, on first use,
//! in one pass over the classes. A class with fewer samples than ranks goes to some ranks and not
//! others (the dealing continues where the previous class stopped, so rank totals still differ
//! by at most one); only a rank left with no sample at all is an error.
//!
//! Adaptive partitioning (moving samples to ranks that run faster) would make the order depend
//! on timing, which the first invariant forbids. Uneven ranks are what the global mode answers:
//! a global batch is split by rows, so any rank can take any sample, and a resume may change
//! the world size.

use std::sync::{Arc, OnceLock};

use super::shuffle::Permutation;
use crate::error::{Error, Result};
use crate::hash::{fnv1a, mix64};
use crate::shard::RangeFile;

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
    /// Rank r owns the sample ranges given for it ([`RankRanges`], per dataset).
    Range,
    /// Rank r owns each class of samples in its global proportion ([`Classes`], per dataset).
    Stratified,
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Partition::Global => "global",
            Partition::Contiguous => "contiguous",
            Partition::Strided => "strided",
            Partition::Hashed => "hashed",
            Partition::Range => "range",
            Partition::Stratified => "stratified",
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
    /// The half-open ranges one after the other; `ends[k]` is the view index where range k
    /// ends.
    Ranges {
        ranges: Arc<[[u64; 2]]>,
        ends: Arc<[u64]>,
    },
    /// The samples listed.
    List(Arc<[u64]>),
}

impl View {
    pub fn len(&self) -> u64 {
        match self {
            View::Range { len, .. } | View::Strided { len, .. } | View::Permuted { len, .. } => {
                *len
            }
            View::Ranges { ends, .. } => ends.last().copied().unwrap_or(0),
            View::List(samples) => samples.len() as u64,
        }
    }

    /// The dataset sample at view index `j`.
    #[inline]
    pub fn sample(&self, j: u64) -> u64 {
        match self {
            View::Range { start, .. } => start + j,
            View::Strided { first, stride, .. } => first + j * stride,
            View::Permuted { perm, start, .. } => perm.apply(start + j),
            View::Ranges { ranges, ends } => {
                let k = ends.partition_point(|&e| e <= j);
                let before = if k == 0 { 0 } else { ends[k - 1] };
                ranges[k][0] + (j - before)
            }
            View::List(samples) => samples[j as usize],
        }
    }
}

/// Each rank's sample ranges of one dataset, for [`Partition::Range`]: `ranks[r]` lists the
/// half-open ranges `[start, end)` rank r owns, in the order its view walks them (the shuffle
/// then permutes within the view).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RankRanges {
    /// Per rank, its `[start, end)` ranges.
    pub ranks: Vec<Vec<[u64; 2]>>,
    /// Leave samples no rank owns unread, instead of refusing the ranges.
    #[serde(default)]
    pub allow_gaps: bool,
}

impl RankRanges {
    /// Ranges for `ranks.len()` ranks, refusing gaps.
    pub fn new(ranks: Vec<Vec<[u64; 2]>>) -> Self {
        RankRanges {
            ranks,
            allow_gaps: false,
        }
    }

    /// The same ranges, with samples left unowned allowed (or not).
    pub fn allow_gaps(mut self, allow: bool) -> Self {
        self.allow_gaps = allow;
        self
    }
}

/// The order's reading of a range partition file (which [`crate::shard`] reads).
impl RangeFile {
    /// The ranges of dataset `name`, or `None` when the file lists none.
    pub fn ranges(&self, name: &str) -> Option<RankRanges> {
        self.datasets.get(name).map(|ranks| RankRanges {
            ranks: ranks.clone(),
            allow_gaps: self.allow_gaps,
        })
    }
}

/// A class per sample of one dataset, for [`Partition::Stratified`] and the standard `class`
/// metric. Shared, so cloning is cheap. A class file beside a shard is read by
/// [`crate::shard::read_class_file`] (or [`crate::shard::read_classes_beside`] for a dataset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classes(Arc<[u32]>);

impl Classes {
    /// Classes from a vector, sample i of class `classes[i]`.
    pub fn new(classes: Vec<u32>) -> Self {
        Classes(classes.into())
    }

    /// The classes of samples `0..n` by a function of the sample index.
    pub fn from_fn(n: u64, f: impl FnMut(u64) -> u32) -> Self {
        Classes((0..n).map(f).collect())
    }

    /// Samples classified.
    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }

    /// Whether no sample is classified.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The classes, by sample.
    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }

    /// Every class with its number of samples, by class.
    pub fn counts(&self) -> Vec<(u32, u64)> {
        match self.dense_max() {
            Some(max) => {
                let mut dense = vec![0u64; max as usize + 1];
                for &c in self.0.iter() {
                    dense[c as usize] += 1;
                }
                dense
                    .into_iter()
                    .enumerate()
                    .filter(|(_, n)| *n > 0)
                    .map(|(c, n)| (c as u32, n))
                    .collect()
            }
            None => {
                let mut counts = std::collections::BTreeMap::<u32, u64>::new();
                for &c in self.0.iter() {
                    *counts.entry(c).or_default() += 1;
                }
                counts.into_iter().collect()
            }
        }
    }

    /// The largest class when every class is below [`DENSE_CLASSES`] (so per-class tables can
    /// be indexed by class), else `None`.
    fn dense_max(&self) -> Option<u32> {
        let max = self.0.iter().copied().max().unwrap_or(0);
        ((max as usize) < DENSE_CLASSES).then_some(max)
    }
}

/// Class ids below this are counted in tables indexed by class; larger ids are looked up.
const DENSE_CLASSES: usize = 1 << 20;

/// What a range or stratified partition of one dataset is computed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Owners {
    /// Every rank's ranges.
    Ranges(RankRanges),
    /// Every sample's class.
    Classes(Classes),
}

/// A range partition's shares, checked.
#[derive(Clone, Debug)]
struct RangeShares {
    ranks: Vec<RankShare>,
}

/// One rank's ranges and their cumulative ends (the view index where each range ends).
#[derive(Clone, Debug)]
struct RankShare {
    ranges: Arc<[[u64; 2]]>,
    ends: Arc<[u64]>,
}

/// A stratified partition: the classes, each class's place in the class-sorted order, and
/// each rank's list once made.
#[derive(Clone, Debug)]
struct Strata {
    classes: Classes,
    /// (class, samples, samples of the classes before it), by class.
    table: Vec<(u32, u64, u64)>,
    lists: Vec<OnceLock<Arc<[u64]>>>,
}

impl Strata {
    fn new(classes: Classes, world: usize) -> Self {
        let mut base = 0;
        let table = classes
            .counts()
            .into_iter()
            .map(|(c, n)| {
                let row = (c, n, base);
                base += n;
                row
            })
            .collect();
        Strata {
            classes,
            table,
            lists: vec![OnceLock::new(); world],
        }
    }

    /// Rank `rank`'s samples, in sample order: the samples whose place in the class-sorted
    /// order is `rank` modulo the world size.
    fn list(&self, rank: usize) -> Arc<[u64]> {
        self.lists[rank]
            .get_or_init(|| {
                let w = self.lists.len() as u64;
                // Each class's next place in the class-sorted order, indexed by class when the
                // ids are small, else found by binary search in the table.
                let mut next: Vec<u64> = self.table.iter().map(|t| t.2).collect();
                let dense: Option<Vec<u32>> = self.classes.dense_max().map(|max| {
                    let mut slot = vec![u32::MAX; max as usize + 1];
                    for (k, t) in self.table.iter().enumerate() {
                        slot[t.0 as usize] = k as u32;
                    }
                    slot
                });
                let mut out = Vec::with_capacity((self.classes.len() / w + 1) as usize);
                for (i, &c) in self.classes.as_slice().iter().enumerate() {
                    let k = match &dense {
                        Some(slot) => slot[c as usize] as usize,
                        None => self
                            .table
                            .binary_search_by_key(&c, |t| t.0)
                            .expect("every class is in the table"),
                    };
                    let place = next[k];
                    next[k] += 1;
                    if place % w == rank as u64 {
                        out.push(i as u64);
                    }
                }
                out.into()
            })
            .clone()
    }

    /// Rank `rank`'s count of each class, without listing its samples.
    fn counts(&self, rank: usize) -> Vec<(u32, u64)> {
        let (w, r) = (self.lists.len() as u64, rank as u64);
        // Places g < x with g % w == r.
        let below = |x: u64| if x <= r { 0 } else { (x - r - 1) / w + 1 };
        self.table
            .iter()
            .map(|&(c, n, base)| (c, below(base + n) - below(base)))
            .collect()
    }
}

/// How one dataset of `n` samples divides among `world` ranks: every rank's [`View`].
#[derive(Clone, Debug)]
pub(crate) struct Split {
    partition: Partition,
    n: u64,
    world: u64,
    /// What the views are computed from beyond (N, W, r).
    input: Input,
    /// A digest of the range or class input (0 for the other modes): a resume checks it.
    digest: u64,
}

/// What a split's views are computed from beyond (N, W, r).
#[derive(Clone, Debug)]
enum Input {
    /// Global, contiguous and strided: nothing.
    None,
    /// Hashed: the keyed permutation.
    Permutation(Permutation),
    /// Range: the checked ranges.
    Ranges(RangeShares),
    /// Stratified: the classes and the lists made from them.
    Strata(Strata),
}

/// The salt of the hashed partition's permutation (epoch and seed play no part: ownership is
/// the same in every epoch and for every seed, which is the point of owning samples).
const OWNER_SALT: u64 = 0x6f77_6e65;

impl Split {
    /// The split of dataset `dataset` (`n` samples, keyed by `stream`) among `world` ranks;
    /// `owners` is the range or stratified partition's input.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyPartition`] when some rank would own no sample; [`Error::BadPartition`]
    /// for range or class input that does not fit the dataset or the world (naming the rank and
    /// the range); [`Error::Config`] when the mode needs input that is missing, or is given
    /// input of the other kind.
    pub fn new(
        partition: Partition,
        dataset: &str,
        stream: u64,
        n: u64,
        world: usize,
        owners: Option<&Owners>,
    ) -> Result<Self> {
        let w = world as u64;
        let mut split = Split {
            partition,
            n,
            world: w,
            input: match partition {
                Partition::Hashed => {
                    Input::Permutation(Permutation::keyed(n, 0, stream, 0, OWNER_SALT))
                }
                _ => Input::None,
            },
            digest: 0,
        };
        let empty = |rank: usize| Error::EmptyPartition {
            dataset: dataset.to_string(),
            size: n,
            world,
            rank,
            partition: partition.to_string(),
        };
        match (partition, owners) {
            (Partition::Range, Some(Owners::Ranges(r))) => {
                split.input = Input::Ranges(check_ranges(dataset, n, world, r)?);
                split.digest = ranges_digest(r);
            }
            (_, Some(Owners::Classes(c))) if c.len() != n => {
                return Err(Error::BadPartition {
                    dataset: dataset.to_string(),
                    rank: None,
                    reason: format!(
                        "{} classes given for {n} samples: one class per sample",
                        c.len()
                    ),
                });
            }
            (Partition::Stratified, Some(Owners::Classes(c))) => {
                if n < w {
                    return Err(empty(n as usize));
                }
                split.digest = classes_digest(c);
                split.input = Input::Strata(Strata::new(c.clone(), world));
            }
            (Partition::Range | Partition::Stratified, _) => {
                let what = if partition == Partition::Range {
                    "its ranks' sample ranges (DatasetSpec::with_owners, Source::with_ranges, \
                     or a range file)"
                } else {
                    "a class per sample (DatasetSpec::with_owners, Source::with_classes, or a \
                     class file)"
                };
                return Err(Error::Config(format!(
                    "dataset {dataset}: the {partition} partition needs {what}"
                )));
            }
            (_, Some(Owners::Ranges(_))) => {
                return Err(Error::Config(format!(
                    "dataset {dataset}: sample ranges were given, but the partition is \
                     {partition}; use the range partition"
                )));
            }
            // Classes with another partition serve the `class` metric alone.
            (Partition::Global, _) => {}
            (_, _) if n < w => {
                // Contiguous and hashed shares are r*N/W .. (r+1)*N/W: rank 0 is empty first.
                // Strided: rank r owns samples only when r < N.
                let rank = if partition == Partition::Strided {
                    n as usize
                } else {
                    0
                };
                return Err(empty(rank));
            }
            (_, _) => {}
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
        match (self.partition, &self.input) {
            (Partition::Hashed, Input::Permutation(perm)) => {
                let (start, len) = share();
                View::Permuted {
                    perm: perm.clone(),
                    start,
                    len,
                }
            }
            (Partition::Range, Input::Ranges(shares)) => {
                let share = &shares.ranks[rank];
                View::Ranges {
                    ranges: Arc::clone(&share.ranges),
                    ends: Arc::clone(&share.ends),
                }
            }
            (Partition::Stratified, Input::Strata(strata)) => View::List(strata.list(rank)),
            (Partition::Contiguous, _) => {
                let (start, len) = share();
                View::Range { start, len }
            }
            (Partition::Strided, _) => View::Strided {
                first: rank as u64,
                stride: self.world,
                len: (n.saturating_sub(r)).div_ceil(w) as u64,
            },
            // Global, and no other pairing is built by `Split::new`.
            _ => View::Range {
                start: 0,
                len: self.n,
            },
        }
    }

    /// The smallest share any rank has.
    pub fn min_len(&self) -> u64 {
        match (self.partition, &self.input) {
            (Partition::Global, _) => self.n,
            (_, Input::Ranges(shares)) => shares
                .ranks
                .iter()
                .map(|share| share.ends.last().copied().unwrap_or(0))
                .min()
                .unwrap_or(0),
            _ => self.n / self.world,
        }
    }

    /// How many samples rank `rank` draws from, without listing a stratified share.
    pub fn share_len(&self, rank: usize) -> u64 {
        match self.class_counts(rank) {
            Some(counts) => counts.iter().map(|c| c.1).sum(),
            None => self.view(rank).len(),
        }
    }

    /// Rank `rank`'s count of each class (stratified only).
    pub fn class_counts(&self, rank: usize) -> Option<Vec<(u32, u64)>> {
        match &self.input {
            Input::Strata(strata) => Some(strata.counts(rank)),
            _ => None,
        }
    }

    /// A digest of the range or class input; 0 for the modes without input.
    pub fn digest(&self) -> u64 {
        self.digest
    }
}

/// Checks a range partition's input against a dataset of `n` samples and `world` ranks.
fn check_ranges(dataset: &str, n: u64, world: usize, input: &RankRanges) -> Result<RangeShares> {
    let bad = |rank: Option<usize>, reason: String| Error::BadPartition {
        dataset: dataset.to_string(),
        rank,
        reason,
    };
    if input.ranks.len() != world {
        return Err(bad(
            None,
            format!(
                "ranges are given for {} ranks but the world has {world}",
                input.ranks.len()
            ),
        ));
    }
    // Every range with its rank, sorted by start: neighbours must not overlap.
    let mut all = Vec::new();
    for (rank, ranges) in input.ranks.iter().enumerate() {
        for &[start, end] in ranges {
            if start >= end {
                return Err(bad(
                    Some(rank),
                    format!("range {start}..{end} is empty or reversed"),
                ));
            }
            if end > n {
                return Err(bad(
                    Some(rank),
                    format!("range {start}..{end} runs past the end of the dataset ({n} samples)"),
                ));
            }
            all.push((start, end, rank));
        }
        if ranges.is_empty() {
            return Err(Error::EmptyPartition {
                dataset: dataset.to_string(),
                size: n,
                world,
                rank,
                partition: Partition::Range.to_string(),
            });
        }
    }
    all.sort_unstable();
    let mut covered = 0;
    for pair in all.windows(2) {
        let ((a0, a1, ra), (b0, b1, rb)) = (pair[0], pair[1]);
        if b0 < a1 {
            let whose = if ra == rb {
                "twice in its own ranges".to_string()
            } else {
                format!("by rank {ra} ({a0}..{a1}) too")
            };
            return Err(bad(
                Some(rb),
                format!(
                    "range {b0}..{b1} overlaps samples {b0}..{} owned {whose}",
                    a1.min(b1)
                ),
            ));
        }
    }
    if !input.allow_gaps {
        for &(start, end, _) in &all {
            if start > covered {
                return Err(bad(
                    None,
                    format!(
                        "samples {covered}..{start} belong to no rank (set allow_gaps to leave \
                         them unread)"
                    ),
                ));
            }
            covered = end;
        }
        if covered < n {
            return Err(bad(
                None,
                format!(
                    "samples {covered}..{n} belong to no rank (set allow_gaps to leave them \
                     unread)"
                ),
            ));
        }
    }
    let ranks = input
        .ranks
        .iter()
        .map(|ranges| {
            let ends: Vec<u64> = ranges
                .iter()
                .scan(0, |acc, &[s, e]| {
                    *acc += e - s;
                    Some(*acc)
                })
                .collect();
            RankShare {
                ranges: Arc::from(ranges.as_slice()),
                ends: Arc::from(ends),
            }
        })
        .collect();
    Ok(RangeShares { ranks })
}

fn ranges_digest(r: &RankRanges) -> u64 {
    let mut h = fnv1a(b"range") ^ r.allow_gaps as u64;
    for (rank, ranges) in r.ranks.iter().enumerate() {
        h = mix64(h ^ rank as u64);
        for &[s, e] in ranges {
            h = mix64(h ^ s);
            h = mix64(h ^ e);
        }
    }
    h
}

fn classes_digest(c: &Classes) -> u64 {
    c.as_slice()
        .iter()
        .fold(fnv1a(b"stratified"), |h, &x| mix64(h ^ x as u64))
}
