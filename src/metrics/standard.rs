//! The standard metric transform: what every batch adds per dataset, computed by the worker that
//! built the batch from its document pieces, as one small partial aggregate.
//!
//! | metric | kind | counts |
//! |---|---|---|
//! | `samples_seen` | SUM | samples delivered (not dropped or skipped) |
//! | `tokens_seen` | SUM | real tokens delivered |
//! | `seq_len` | DISTRIBUTION | each delivered sample's length after transforms |
//! | `epoch` | MAX | the dataset epoch reached |
//! | `samples_truncated` | SUM | samples cut or dropped for length |
//! | `samples_failed` | SUM | samples skipped by the bad-sample policy |
//! | `class` | CATEGORICAL | delivered samples per class, for a dataset with classes ([`Classes`]: the stratified partition's, or given for the metric alone) |

use super::aggregator::{Aggregator, Kind};
use crate::collate::{DocRef, Pool, PooledBuf};
use crate::error::Result;
use crate::order::Classes;

/// A dataset's classes with each class's category name, for the standard `class` metric.
#[derive(Clone, Debug)]
pub struct ClassNames {
    classes: Classes,
    /// (class, its decimal name), by class.
    names: Vec<(u32, String)>,
}

impl ClassNames {
    /// The names of `classes`' classes.
    pub fn new(classes: Classes) -> Self {
        let names = classes
            .counts()
            .into_iter()
            .map(|(c, _)| (c, c.to_string()))
            .collect();
        ClassNames { classes, names }
    }

    /// The class of `sample`.
    fn of(&self, sample: u64) -> u32 {
        self.classes.as_slice()[sample as usize]
    }

    /// The category name of `class`.
    fn name(&self, class: u32) -> &str {
        let k = self
            .names
            .binary_search_by_key(&class, |n| n.0)
            .expect("a sample's class is one of its dataset's classes");
        &self.names[k].1
    }
}

/// One dataset's share of a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct DatasetCounts {
    /// 1 when the batch holds a piece of the dataset.
    seen: u64,
    samples: u64,
    tokens: u64,
    truncated: u64,
    failed: u64,
    epoch: u64,
}

/// The standard metrics of one batch: a small partial, per dataset index, that a worker computes
/// from the batch's document pieces and the caller folds into its aggregator in plan order. Its
/// buffers come from the loader's pool, so a steady stream allocates none.
pub struct BatchMetrics {
    per: PooledBuf<DatasetCounts>,
    /// (dataset, length, class or 0) of every sample delivered, in row order.
    lengths: PooledBuf<[u32; 3]>,
}

impl std::fmt::Debug for BatchMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchMetrics")
            .field("per", &&self.per[..])
            .field("lengths", &self.lengths.len())
            .finish()
    }
}

impl BatchMetrics {
    /// The standard metrics of `docs` over `datasets` datasets (`classes[d]`: dataset d's
    /// classes, if any), in buffers from `pool`.
    pub fn of(
        docs: &[DocRef],
        datasets: usize,
        classes: &[Option<ClassNames>],
        pool: &Pool,
    ) -> Self {
        let mut per = pool.take::<DatasetCounts>(datasets);
        per.fill(DatasetCounts::default());
        let mut lengths = pool.take::<[u32; 3]>(docs.len());
        let mut n = 0;
        for d in docs {
            let acc = &mut per[d.dataset as usize];
            acc.seen = 1;
            acc.epoch = acc.epoch.max(d.epoch);
            acc.tokens += d.len as u64;
            if d.doc_offset != 0 {
                continue; // the rest of a document is counted where it began
            }
            if d.flags & DocRef::SKIPPED != 0 {
                acc.failed += 1;
                continue;
            }
            if d.flags & (DocRef::TRUNCATED | DocRef::DROPPED) != 0 {
                acc.truncated += 1;
            }
            if d.flags & DocRef::DROPPED == 0 {
                acc.samples += 1;
                let class = classes
                    .get(d.dataset as usize)
                    .and_then(Option::as_ref)
                    .map_or(0, |c| c.of(d.sample));
                lengths[n] = [d.dataset, d.doc_len, class];
                n += 1;
            }
        }
        lengths.truncate(n);
        BatchMetrics { per, lengths }
    }

    /// Adds these counts to `agg` (`names[d]` names dataset index d, `classes[d]` its classes
    /// as given to [`BatchMetrics::of`]). Every metric is recorded for every dataset present,
    /// zeros included, so the set of names is stable from the first batch on and cross-rank
    /// reduces need no name exchange (the `class` categories are exchanged by the reduce).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Metric`] if `agg` holds one of these names with another kind.
    pub fn merge_into(
        &self,
        agg: &mut Aggregator,
        names: &[String],
        classes: &[Option<ClassNames>],
    ) -> Result<()> {
        for (d, (acc, name)) in self.per.iter().zip(names).enumerate() {
            if acc.seen == 0 {
                continue;
            }
            let of_d = self.lengths.iter().filter(|l| l[0] as usize == d);
            agg.record(name, "samples_seen", Kind::Sum, acc.samples as f64)?;
            agg.record(name, "tokens_seen", Kind::Sum, acc.tokens as f64)?;
            agg.record_all(name, "seq_len", of_d.clone().map(|l| l[1] as f64))?;
            agg.record(name, "epoch", Kind::Max, acc.epoch as f64)?;
            agg.record(name, "samples_truncated", Kind::Sum, acc.truncated as f64)?;
            agg.record(name, "samples_failed", Kind::Sum, acc.failed as f64)?;
            // The metric exists once the dataset is present, even before a sample of it is
            // delivered.
            if let Some(c) = classes.get(d).and_then(Option::as_ref) {
                agg.record_categories(name, "class", of_d.map(|l| c.name(l[2])))?;
            }
        }
        Ok(())
    }
}

/// Records the standard metrics of one batch's document pieces into `agg`, per dataset
/// (`names[d]` names dataset index d).
///
/// # Errors
///
/// As [`BatchMetrics::merge_into`].
pub fn standard_metrics(docs: &[DocRef], names: &[String], agg: &mut Aggregator) -> Result<()> {
    BatchMetrics::of(docs, names.len(), &[], &Pool::new()).merge_into(agg, names, &[])
}

/// What a user metric function records for one sample: metrics of the sample's dataset.
pub struct SampleMetrics<'a> {
    agg: &'a mut Aggregator,
    dataset: &'a str,
}

impl<'a> SampleMetrics<'a> {
    /// Records into `agg` for `dataset`.
    pub fn new(agg: &'a mut Aggregator, dataset: &'a str) -> Self {
        SampleMetrics { agg, dataset }
    }

    /// Records a numeric value of metric `name`.
    ///
    /// # Errors
    ///
    /// As [`Aggregator::record`].
    pub fn record(&mut self, name: &str, kind: Kind, value: f64) -> Result<()> {
        self.agg.record(self.dataset, name, kind, value)
    }

    /// Counts `category` for metric `name`.
    ///
    /// # Errors
    ///
    /// As [`Aggregator::record_category`].
    pub fn record_category(&mut self, name: &str, category: &str) -> Result<()> {
        self.agg.record_category(self.dataset, name, category)
    }
}
