//! The plan (a validated order configuration over dataset sizes) and the sequential planner that
//! walks it batch by batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::cursor::{Cursor, DatasetCursor};
use super::mixture::{MixState, MixtureMode};
use super::partition::{Partition, View, views};
use super::shuffle::{EpochOrder, Shuffle, fnv1a, mix64};
use crate::error::{Error, Result};

/// A named dataset as the order sees it: a size and a mixture weight. No token data is read.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetSpec {
    /// Unique name; the cursor keys state by it.
    pub name: String,
    /// Number of samples.
    pub len: u64,
    /// Mixture weight: finite and positive; weights are normalized to sum to 1.
    pub weight: f64,
}

impl DatasetSpec {
    /// A dataset named `name` of `len` samples with mixture weight `weight`.
    pub fn new(name: impl Into<String>, len: u64, weight: f64) -> Self {
        DatasetSpec {
            name: name.into(),
            len,
            weight,
        }
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
    /// After `e` times the mixture's size (the sum of its datasets' sizes), rounded down. For a
    /// single dataset, or weights proportional to sizes, each sample is seen floor(e) or ceil(e)
    /// times.
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
        }
    }
}

impl OrderConfig {
    /// Validates the configuration against `datasets` and builds the plan.
    ///
    /// # Errors
    ///
    /// [`Error::NoDatasets`], [`Error::DuplicateDatasets`] (listing the names),
    /// [`Error::BadWeight`], [`Error::EmptyDataset`], [`Error::EmptyPartition`] (naming the
    /// dataset, its size and the world size), and [`Error::Config`] for a zero world or batch,
    /// a rank outside the world, a zero block size or a bad limit.
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
    weights: Vec<f64>,
    streams: Vec<u64>,
    /// `views[d][v]`: dataset d as view v sees it (one view in the global mode, one per rank
    /// otherwise).
    views: Vec<Vec<View>>,
    /// `slot_base[d]`: where dataset d's views start in a planner's cache of epoch orders.
    slot_base: Vec<usize>,
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
        let total_weight: f64 = datasets.iter().map(|d| d.weight).sum();
        let views = datasets
            .iter()
            .map(|d| views(c.partition, &d.name, d.len, c.world))
            .collect::<Result<Vec<_>>>()?;
        let ownership = c.partition != Partition::Global;
        let rows_per_step = if ownership {
            c.local_batch
        } else {
            c.world * c.local_batch
        } as u64;
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
                // Every rank takes the same number of full steps: the smallest rank's budget.
                let per_rank = (0..c.world).map(|r| {
                    let size: u64 = views.iter().map(|v| v[r].len()).sum();
                    (e * size as f64).floor() as u64
                });
                Some(per_rank.min().unwrap_or(0) / rows_per_step * rows_per_step)
            }
            StreamLimit::Epochs(e) => {
                Some((e * datasets.iter().map(|d| d.len).sum::<u64>() as f64).floor() as u64)
            }
        };
        Ok(Plan {
            streams: datasets.iter().map(|d| fnv1a(d.name.as_bytes())).collect(),
            weights: datasets.iter().map(|d| d.weight / total_weight).collect(),
            lens: datasets.iter().map(|d| d.len).collect(),
            names: datasets.into_iter().map(|d| d.name).collect(),
            slot_base: views
                .iter()
                .scan(0, |acc, v| {
                    let base = *acc;
                    *acc += v.len();
                    Some(base)
                })
                .collect(),
            views,
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

    /// Normalized mixture weights, in dataset order.
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

    /// Number of steps, or `None` for an endless stream. In the global mode a last partial
    /// global batch counts as a step (its rows go to the first ranks); the ownership modes take
    /// full steps only.
    pub fn steps(&self) -> Option<u64> {
        self.total_rows.map(|t| t.div_ceil(self.rows_per_step))
    }

    /// The samples rank `rank` owns of dataset `dataset`, in view order (all of them in the
    /// global mode).
    pub fn owned(&self, dataset: usize, rank: usize) -> impl Iterator<Item = u64> + '_ {
        let v = &self.views[dataset][if self.ownership() { rank } else { 0 }];
        (0..v.len()).map(move |j| v.sample(j))
    }

    fn ownership(&self) -> bool {
        self.config.partition != Partition::Global
    }
}

/// Walks a [`Plan`] batch by batch; cheap and sequential. Its [`Planner::cursor`] is what a
/// checkpoint stores.
#[derive(Debug)]
pub struct Planner {
    plan: Arc<Plan>,
    step: u64,
    position: u64,
    mix: MixState,
    /// `orders[d * views + v]`: the cached epoch order of dataset d as view v sees it.
    orders: Vec<Option<(u64, EpochOrder)>>,
    draws: Vec<(u32, u64)>,
}

impl Planner {
    /// A planner at the start of the stream.
    pub fn new(plan: Arc<Plan>) -> Self {
        let mix = MixState::new(plan.names.len());
        Self::at(plan, 0, 0, mix)
    }

    pub(crate) fn at(plan: Arc<Plan>, step: u64, position: u64, mix: MixState) -> Self {
        let slots = plan.views.iter().map(Vec::len).sum();
        Planner {
            orders: vec![None; slots],
            draws: Vec::new(),
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
        }
    }

    /// Appends this rank's rows of the next global batch to `out` (cleared first). Returns
    /// false, leaving `out` empty, when the stream has ended.
    pub fn next_rows(&mut self, out: &mut Vec<Row>) -> bool {
        let rank = self.plan.config.rank;
        self.next_batch(out, rank..rank + 1)
    }

    /// Appends every rank's rows of the next global batch to `out` (cleared first), rank by
    /// rank. Returns false when the stream has ended.
    pub fn next_global(&mut self, out: &mut Vec<Row>) -> bool {
        let world = self.plan.config.world;
        self.next_batch(out, 0..world)
    }

    /// Advances to `step` without mapping rows to samples: only the mixture draws are replayed,
    /// a few arithmetic operations per row. Never moves backwards.
    pub fn skip_to(&mut self, step: u64) {
        let p = Arc::clone(&self.plan);
        while self.step < step {
            let rows = self.rows_in_step();
            if rows == 0 {
                return;
            }
            for i in 0..rows {
                self.mix.draw(
                    p.config.mixture,
                    &p.weights,
                    p.config.seed,
                    self.position + i,
                );
            }
            self.position += rows;
            self.step += 1;
        }
    }

    fn rows_in_step(&self) -> u64 {
        let left = self
            .plan
            .total_rows
            .map_or(u64::MAX, |t| t.saturating_sub(self.position));
        left.min(self.plan.rows_per_step)
    }

    fn next_batch(&mut self, out: &mut Vec<Row>, ranks: std::ops::Range<usize>) -> bool {
        out.clear();
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
                .draw(c.mixture, &p.weights, c.seed, self.position + i);
            self.draws.push((d as u32, n));
        }
        let b = c.local_batch;
        let draws = std::mem::take(&mut self.draws);
        for r in ranks {
            if p.ownership() {
                for &(d, n) in &draws {
                    out.push(self.map(&p, d, n, r, r));
                }
            } else {
                let slice = draws
                    .get(r * b..((r + 1) * b).min(draws.len()))
                    .unwrap_or(&[]);
                for &(d, n) in slice {
                    out.push(self.map(&p, d, n, 0, r));
                }
            }
        }
        self.draws = draws;
        self.position += rows;
        self.step += 1;
        true
    }

    /// The row for the `n`-th draw (0-based) of dataset `d`, as view `v` sees it, for `rank`.
    #[inline]
    fn map(&mut self, p: &Plan, d: u32, n: u64, v: usize, rank: usize) -> Row {
        let view = &p.views[d as usize][v];
        let len = view.len();
        let (epoch, offset) = (n / len, n % len);
        let slot = p.slot_base[d as usize] + v;
        let order = match &self.orders[slot] {
            Some((e, order)) if *e == epoch => order,
            _ => {
                let stream = p.streams[d as usize]
                    ^ if p.ownership() {
                        mix64(v as u64 + 1)
                    } else {
                        0
                    };
                let order = EpochOrder::new(p.config.shuffle, len, p.config.seed, stream, epoch);
                &self.orders[slot].insert((epoch, order)).1
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
