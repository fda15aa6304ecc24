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

use super::aggregator::{Aggregator, Kind};
use super::sketch::Sketch;
use crate::collate::DocRef;
use crate::error::Result;

#[derive(Default)]
struct PerDataset {
    seen: bool,
    samples: u64,
    tokens: u64,
    truncated: u64,
    failed: u64,
    epoch: u64,
    lengths: Sketch,
}

/// Records the standard metrics of one batch's document pieces into `agg`, per dataset
/// (`names[d]` names dataset index d). Every metric is recorded for every dataset present, zeros included, so the set of
/// names is stable from the first batch on and cross-rank reduces need no name exchange.
///
/// # Errors
///
/// None in practice: every value recorded is finite and every kind fixed.
pub fn standard_metrics(docs: &[DocRef], names: &[String], agg: &mut Aggregator) -> Result<()> {
    let map = *agg.mapping();
    let mut per: Vec<PerDataset> = (0..names.len()).map(|_| PerDataset::default()).collect();
    for d in docs {
        let acc = &mut per[d.dataset as usize];
        acc.seen = true;
        acc.epoch = acc.epoch.max(d.epoch);
        acc.tokens += d.len as u64;
        if d.doc_offset != 0 {
            continue; // the rest of a document counted where it began
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
            acc.lengths.add(&map, d.doc_len as f64);
        }
    }
    for (acc, name) in per.iter().zip(names).filter(|(a, _)| a.seen) {
        agg.record(name, "samples_seen", Kind::Sum, acc.samples as f64)?;
        agg.record(name, "tokens_seen", Kind::Sum, acc.tokens as f64)?;
        agg.add_sketch(name, "seq_len", &acc.lengths)?;
        agg.record(name, "epoch", Kind::Max, acc.epoch as f64)?;
        agg.record(name, "samples_truncated", Kind::Sum, acc.truncated as f64)?;
        agg.record(name, "samples_failed", Kind::Sum, acc.failed as f64)?;
    }
    Ok(())
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
