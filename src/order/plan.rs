//! The plan (a validated order configuration over dataset sizes) and the sequential planner that
//! walks it batch by batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cursor::{Cursor, DatasetCursor};
use super::mixture::{MixState, MixtureMode, RESOLUTION, quantize};
use super::partition::{Owners, Partition, Split, View};
use super::shuffle::{EpochOrder, Shuffle};
use crate::error::{Error, Result};
use crate::hash::{fnv1a, mix64};

/// The most rows a global batch (world size x local batch) may hold: planning keeps one step's
/// draws in memory, 16 bytes a row.
pub const MAX_GLOBAL_BATCH: u64 = 1 << 24;

/// A named dataset as the order sees it: a size and a mixture weight. No token data is read.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    /// Unique name; the cursor keys state by it.
    pub name: String,
    /// Number of samples.
    pub len: u64,
    /// Mixture weight: finite and positive; weights are normalized to sum to 1.
    pub weight: f64,
    /// The range or stratified partition's input for this dataset (not serialized: a checkpoint
    /// keeps a digest of it).
    #[serde(skip)]
    pub owners: Option<Owners>,
}

impl DatasetSpec {
    /// A dataset named `name` of `len` samples with mixture weight `weight`.
    pub fn new(name: impl Into<String>, len: u64, weight: f64) -> Self {
        DatasetSpec {
            name: name.into(),
            len,
            weight,
            owners: None,
        }
    }

    /// The same dataset with the range or stratified partition's input.
    pub fn with_owners(mut self, owners: Option<Owners>) -> Self {
        self.owners = owners;
        self
    }
}

/// Where the stream ends.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamLimit {
    /// Never: datasets start new epochs as they run out.
    Endless,
    /// After this many rows (in the global mode, rows of the global stream; in the ownership
    /// modes, this many over all ranks, divided evenly).
    Samples(u64),
    /// After `floor(e * S)` rows, where `S` is the mixture's size (the sum of its datasets'
    /// sizes). The mixture gives dataset d `c_d` of them, within one sample of its weight's
    /// share; its samples are then seen `floor(c_d / N_d)` or `ceil(c_d / N_d)` times each. For a
    /// single dataset, or weights proportional to sizes, that is floor(e) or ceil(e) times; a
    /// dataset weighted below its size's share sees fewer than e epochs (some samples perhaps
    /// never), one weighted above sees more. In the ownership modes every rank takes
    /// `floor(e * S_min)` rows, rounded down to whole steps, where `S_min` sums the smallest
    /// share any rank has of each dataset.
    Epochs(f64),
}

/// The order configuration. `OrderConfig { .. }.init(datasets)` builds a [`Plan`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OrderConfig {
    /// The seed of every shuffle and stochastic draw.
    pub seed: u64,
    /// The shuffle within each epoch.
    pub shuffle: Shuffle,
    /// How datasets are interleaved.
    pub mixture: MixtureMode,
    /// How samples are divided among ranks.
    pub partition: Partition,
    /// Number of ranks.
    pub world: usize,
    /// This rank.
    pub rank: usize,
    /// Rows per rank per step; the global batch holds `world * local_batch` rows.
    pub local_batch: usize,
    /// Where the stream ends.
    pub limit: StreamLimit,
    /// Drop the last global batch of a limited stream when it is incomplete, so that every rank
    /// takes the same number of full steps. Without it, in the global partition, the last step
    /// holds the remaining rows, dealt to the first ranks in rank order: a rank may get fewer
    /// rows than its local batch, or none (an empty batch), which data-parallel training
    /// must then handle (every rank still takes the step). The ownership partitions always take
    /// whole steps, so it changes nothing there.
    #[serde(default)]
    pub drop_last: bool,
}

impl Default for OrderConfig {
    fn default() -> Self {
        OrderConfig {
            seed: 0,
            shuffle: Shuffle::Full,
            mixture: MixtureMode::Deterministic,
            partition: Partition::Global,
            world: 1,
            rank: 0,
            local_batch: 1,
            limit: StreamLimit::Endless,
            drop_last: false,
        }
    }
}

impl OrderConfig {
    /// Validates the configuration against `datasets` and builds the plan.
    ///
    /// # Errors
    ///
    /// [`Error::NoDatasets`], [`Error::DuplicateDatasets`] (listing the names),
    /// [`Error::BadWeight`], [`Error::WeightBelowResolution`] (a weight below the mixture's
    /// resolution, 2^-20 of the total), [`Error::EmptyDataset`], [`Error::EmptyPartition`] (naming the dataset, its size
    /// and the world size), [`Error::BadPartition`] for range or class input that does not fit
    /// (naming the dataset, the rank and the range), and [`Error::Config`] for a range or
    /// stratified partition without its input, an empty dataset name, a zero world or
    /// batch, a global batch over [`MAX_GLOBAL_BATCH`] rows, a rank outside the world, a zero
    /// block size or a bad limit.
    pub fn init(self, datasets: Vec<DatasetSpec>) -> Result<Plan> {
        Plan::new(datasets, self)
    }
}

/// One row of a batch: which sample of which dataset, in which of its epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The rank that takes the row.
    pub rank: u32,
    /// The dataset, as an index into [`Plan::names`].
    pub dataset: u32,
    /// The sample index within the dataset.
    pub sample: u64,
    /// The dataset's epoch this draw belongs to.
    pub epoch: u64,
}

/// A validated order: pure data, shared by planners.
#[derive(Debug)]
pub struct Plan {
    config: OrderConfig,
    names: Vec<String>,
    lens: Vec<u64>,
    /// Integer mixture shares summing to [`RESOLUTION`].
    shares: Vec<u64>,
    /// The shares as normalized weights (`share / RESOLUTION`, exact in f64).
    weights: Vec<f64>,
    streams: Vec<u64>,
    /// How each dataset divides among ranks.
    splits: Vec<Split>,
    /// This rank's view of each dataset.
    own: Vec<View>,
    rows_per_step: u64,
    total_rows: Option<u64>,
}

impl Plan {
    fn new(datasets: Vec<DatasetSpec>, config: OrderConfig) -> Result<Plan> {
        let c = &config;
        if datasets.is_empty() {
            return Err(Error::NoDatasets);
        }
        if c.world == 0 || c.local_batch == 0 {
            return Err(Error::Config(
                "world size and local batch size must be at least 1".into(),
            ));
        }
        let global = (c.world as u64)
            .checked_mul(c.local_batch as u64)
            .filter(|&g| g <= MAX_GLOBAL_BATCH)
            .ok_or_else(|| {
                Error::Config(format!(
                    "world size {} x local batch {} exceeds the largest global batch, \
                     {MAX_GLOBAL_BATCH} rows",
                    c.world, c.local_batch
                ))
            })?;
        if c.rank >= c.world {
            return Err(Error::Config(format!(
                "rank {} is outside world size {}",
                c.rank, c.world
            )));
        }
        if c.shuffle == Shuffle::Block(0) {
            return Err(Error::Config(
                "a shuffle block must hold at least one sample".into(),
            ));
        }
        if datasets.iter().any(|d| d.name.is_empty()) {
            return Err(Error::Config("a dataset name is empty".into()));
        }
        let mut seen = BTreeMap::<&str, usize>::new();
        for d in &datasets {
            *seen.entry(&d.name).or_default() += 1;
        }
        let dups: Vec<String> = seen
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(name, _)| name.to_string())
            .collect();
        if !dups.is_empty() {
            return Err(Error::DuplicateDatasets { names: dups });
        }
        for d in &datasets {
            if !(d.weight.is_finite() && d.weight > 0.0) {
                return Err(Error::BadWeight {
                    dataset: d.name.clone(),
                    weight: d.weight,
                });
            }
            if d.len == 0 {
                return Err(Error::EmptyDataset {
                    dataset: d.name.clone(),
                });
            }
        }
        let names: Vec<String> = datasets.iter().map(|d| d.name.clone()).collect();
        let raw: Vec<f64> = datasets.iter().map(|d| d.weight).collect();
        let shares = quantize(&names, &raw)?;
        let streams: Vec<u64> = names.iter().map(|n| fnv1a(n.as_bytes())).collect();
        let splits = datasets
            .iter()
            .zip(&streams)
            .map(|(d, &s)| Split::new(c.partition, &d.name, s, d.len, c.world, d.owners.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        let ownership = c.partition != Partition::Global;
        let rows_per_step = if ownership {
            c.local_batch as u64
        } else {
            global
        };
        let budget = |e: f64, size: u128| -> Result<u64> {
            let rows = (e * size as f64).floor();
            if rows >= u64::MAX as f64 {
                return Err(Error::Config(format!(
                    "an epoch budget of {e} over {size} samples exceeds 2^64 rows"
                )));
            }
            Ok(rows as u64)
        };
        let total_rows = match c.limit {
            StreamLimit::Endless => None,
            StreamLimit::Samples(n) if ownership => {
                Some(n / c.world as u64 / rows_per_step * rows_per_step)
            }
            StreamLimit::Samples(n) => Some(n),
            StreamLimit::Epochs(e) if !(e.is_finite() && e >= 0.0) => {
                return Err(Error::Config(format!(
                    "epoch budget {e} is not a finite number >= 0"
                )));
            }
            StreamLimit::Epochs(e) if ownership => {
                // Every rank takes the same number of full steps, from the smallest shares.
                let size: u128 = splits.iter().map(|s| s.min_len() as u128).sum();
                Some(budget(e, size)? / rows_per_step * rows_per_step)
            }
            StreamLimit::Epochs(e) => {
                Some(budget(e, datasets.iter().map(|d| d.len as u128).sum())?)
            }
        };
        let total_rows = match total_rows {
            Some(t) if c.drop_last => Some(t / rows_per_step * rows_per_step),
            t => t,
        };
        Ok(Plan {
            own: splits.iter().map(|s| s.view(c.rank)).collect(),
            weights: shares
                .iter()
                .map(|&k| k as f64 / RESOLUTION as f64)
                .collect(),
            shares,
            streams,
            lens: datasets.iter().map(|d| d.len).collect(),
            names,
            splits,
            rows_per_step,
            total_rows,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OrderConfig {
        &self.config
    }

    /// Dataset names, in the order given; [`Row::dataset`] indexes this.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Normalized mixture weights, in dataset order: the given weights quantized to multiples
    /// of 2^-20 (see [`super::mixture`]).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Dataset sizes, in dataset order.
    pub fn lens(&self) -> &[u64] {
        &self.lens
    }

    /// Rows of a global batch: `world * local_batch`.
    pub fn global_batch(&self) -> u64 {
        (self.config.world * self.config.local_batch) as u64
    }

    /// Rows this rank's stream advances per step: the global batch in the global mode, the
    /// local batch in the ownership modes.
    pub fn rows_per_step(&self) -> u64 {
        self.rows_per_step
    }

    /// Number of steps, or `None` for an endless stream. In the global mode a last partial
    /// global batch counts as a step (its rows go to the first ranks) unless
    /// [`OrderConfig::drop_last`]; the ownership modes take full steps only.
    pub fn steps(&self) -> Option<u64> {
        self.total_rows.map(|t| t.div_ceil(self.rows_per_step))
    }

    /// The stream position where `step` starts (the end of the stream for a step past it), or
    /// `None` when it does not fit in 64 bits.
    pub fn position_of(&self, step: u64) -> Option<u64> {
        match (step.checked_mul(self.rows_per_step), self.total_rows) {
            (Some(p), Some(t)) => Some(p.min(t)),
            (None, Some(t)) => Some(t),
            (p, None) => p,
        }
    }

    /// The samples rank `rank` owns of dataset `dataset`, in view order (all of them in the
    /// global mode).
    pub fn owned(&self, dataset: usize, rank: usize) -> impl Iterator<Item = u64> + '_ {
        let v = self.splits[dataset].view(rank);
        (0..v.len()).map(move |j| v.sample(j))
    }

    /// How many samples of dataset `dataset` rank `rank` draws from (all of them in the
    /// global mode).
    pub fn share_len(&self, dataset: usize, rank: usize) -> u64 {
        self.splits[dataset].share_len(rank)
    }

    /// Rank `rank`'s count of each class of dataset `dataset`, by class (the stratified
    /// partition only).
    pub fn class_counts(&self, dataset: usize, rank: usize) -> Option<Vec<(u32, u64)>> {
        self.splits[dataset].class_counts(rank)
    }

    /// A digest of the range or stratified partition's input (`None` for the other modes): a
    /// cursor carries it, and a resume with other ranges or classes is refused.
    pub fn partition_digest(&self) -> Option<u64> {
        matches!(
            self.config.partition,
            Partition::Range | Partition::Stratified
        )
        .then(|| self.splits.iter().fold(0, |h, s| mix64(h ^ s.digest())))
    }

    /// The integer mixture shares, summing to [`RESOLUTION`].
    pub(crate) fn shares(&self) -> &[u64] {
        &self.shares
    }

    fn ownership(&self) -> bool {
        self.config.partition != Partition::Global
    }
}

/// Walks a [`Plan`] batch by batch; cheap and sequential. Its [`Planner::cursor`] is what a
/// checkpoint stores. A clone walks on independently from the same place.
#[derive(Clone, Debug)]
pub struct Planner {
    plan: Arc<Plan>,
    step: u64,
    position: u64,
    mix: MixState,
    /// Per dataset, the last epoch order built: (view, epoch, order).
    orders: Vec<Option<(u64, u64, EpochOrder)>>,
    draws: Vec<(u32, u64)>,
    /// Other ranks' views while a step is handed out rank by rank.
    views: Vec<View>,
    rows: Vec<Row>,
}

impl Planner {
    /// A planner at the start of the stream.
    pub fn new(plan: Arc<Plan>) -> Self {
        let mix = MixState::new(plan.names.len());
        Self::at(plan, 0, 0, mix)
    }

    pub(crate) fn at(plan: Arc<Plan>, step: u64, position: u64, mix: MixState) -> Self {
        Planner {
            orders: vec![None; plan.names.len()],
            draws: Vec::new(),
            views: Vec::new(),
            rows: Vec::new(),
            plan,
            step,
            position,
            mix,
        }
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The next step to plan.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The state to checkpoint: planning resumes from it in O(datasets), replaying nothing.
    pub fn cursor(&self) -> Cursor {
        let p = &self.plan;
        let c = &p.config;
        let datasets = (0..p.names.len())
            .map(|d| {
                let dc = DatasetCursor {
                    consumed: self.mix.counts[d],
                    consumed_at_origin: self.mix.at_origin[d],
                    len: p.lens[d],
                    weight: p.weights[d],
                };
                (p.names[d].clone(), dc)
            })
            .collect();
        Cursor {
            step: self.step,
            position: self.position,
            mixture_origin: self.mix.origin,
            datasets,
            seed: c.seed,
            shuffle: c.shuffle,
            mixture: c.mixture,
            partition: c.partition,
            global_batch: p.global_batch(),
            world: c.world,
            partition_digest: p.partition_digest(),
            drop_last: p.config.drop_last,
        }
    }

    /// Appends this rank's rows of the next global batch to `out` (cleared first). Returns
    /// false, leaving `out` empty, when the stream has ended.
    pub fn next_rows(&mut self, out: &mut Vec<Row>) -> bool {
        out.clear();
        let rank = self.plan.config.rank;
        self.next_step(rank..rank + 1, |_, rows| out.extend_from_slice(rows))
    }

    /// Appends every rank's rows of the next global batch to `out` (cleared first), rank by
    /// rank. Returns false when the stream has ended.
    pub fn next_global(&mut self, out: &mut Vec<Row>) -> bool {
        out.clear();
        let world = self.plan.config.world;
        self.next_step(0..world, |_, rows| out.extend_from_slice(rows))
    }

    /// Plans the next step and hands each rank of `ranks` its rows, in rank order, through a
    /// buffer of one rank's rows: memory stays at one global batch of draws however many ranks
    /// there are. Returns false, calling nothing, when the stream has ended.
    pub fn next_step(
        &mut self,
        ranks: std::ops::Range<usize>,
        mut each: impl FnMut(usize, &[Row]),
    ) -> bool {
        let rows = self.rows_in_step();
        if rows == 0 {
            return false;
        }
        let p = Arc::clone(&self.plan);
        let c = &p.config;
        self.draws.clear();
        for i in 0..rows {
            let (d, n) = self
                .mix
                .draw(c.mixture, &p.shares, c.seed, self.position + i);
            self.draws.push((d as u32, n));
        }
        let b = c.local_batch;
        let draws = std::mem::take(&mut self.draws);
        let mut out = std::mem::take(&mut self.rows);
        let mut views = std::mem::take(&mut self.views);
        for r in ranks {
            out.clear();
            if p.ownership() {
                // Every rank maps the same draws through its own view.
                let own = r == c.rank;
                if !own {
                    views.clear();
                    views.extend(p.splits.iter().map(|s| s.view(r)));
                }
                for &(d, n) in &draws {
                    let view = if own {
                        &p.own[d as usize]
                    } else {
                        &views[d as usize]
                    };
                    out.push(self.map(&p, d, n, view, r as u64, r));
                }
            } else {
                let slice = draws
                    .get(r * b..((r + 1) * b).min(draws.len()))
                    .unwrap_or(&[]);
                for &(d, n) in slice {
                    out.push(self.map(&p, d, n, &p.own[d as usize], 0, r));
                }
            }
            each(r, &out);
        }
        self.draws = draws;
        self.rows = out;
        self.views = views;
        self.position += rows;
        self.step += 1;
        true
    }

    /// Advances to `step` (the end of the stream, if that comes first) without mapping rows to
    /// samples: the mixture jumps in `O(2^20 x datasets)` at most, however far. Never moves
    /// backwards.
    ///
    /// # Panics
    ///
    /// When the step's position does not fit in 64 bits ([`Plan::position_of`] says so first).
    pub fn skip_to(&mut self, step: u64) {
        if step <= self.step {
            return;
        }
        let p = Arc::clone(&self.plan);
        let to = p
            .position_of(step)
            .expect("the caller checks that the step's position fits 64 bits");
        if to > self.position {
            let c = &p.config;
            self.mix
                .advance(c.mixture, &p.shares, c.seed, self.position, to);
        }
        self.step = match p.steps() {
            Some(last) => step.min(last.max(self.step)),
            None => step,
        };
        self.position = to.max(self.position);
    }

    fn rows_in_step(&self) -> u64 {
        // An endless stream ends at row 2^64 - 1, where positions stop fitting 64 bits.
        let left = self
            .plan
            .total_rows
            .unwrap_or(u64::MAX)
            .saturating_sub(self.position);
        left.min(self.plan.rows_per_step)
    }

    /// The row for the `n`-th draw (0-based) of dataset `d`, as view `v` (numbered `view_id`)
    /// sees it, for `rank`.
    #[inline]
    fn map(&mut self, p: &Plan, d: u32, n: u64, view: &View, view_id: u64, rank: usize) -> Row {
        let len = view.len();
        let (epoch, offset) = (n / len, n % len);
        let order = match &self.orders[d as usize] {
            Some((v, e, order)) if *v == view_id && *e == epoch => order,
            _ => {
                let stream =
                    p.streams[d as usize] ^ if p.ownership() { mix64(view_id + 1) } else { 0 };
                let order = EpochOrder::new(p.config.shuffle, len, p.config.seed, stream, epoch);
                &self.orders[d as usize].insert((view_id, epoch, order)).2
            }
        };
        Row {
            rank: rank as u32,
            dataset: d,
            sample: view.sample(order.at(offset)),
            epoch,
        }
    }
}
