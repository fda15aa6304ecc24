//! The fused cross-rank reduce over the buffers of [`super::wire`].
//!
//! 1. A fixed-size header (nine u64, one MAX all-reduce): the SUM and MAX buffers' lengths, the
//!    layout's fingerprint and this aggregator's reduce call number, each as `(x, !x)` so that
//!    the MAX gives every field's maximum and minimum, and the count of names (metric keys,
//!    categories) that this rank has and the agreed layout lacks. When a field differs between
//!    ranks, every rank refuses with [`Error::CollectiveMismatch`] naming the fields and the
//!    ranks, before any buffer whose length depends on the layout reaches an engine (NCCL would
//!    reduce buffers of different lengths into garbage, or hang).
//! 2. When some rank has new names, the ranks all-gather them and agree on the sorted union.
//! 3. The SUM buffer and the MAX buffer, one all-reduce each (skipped when empty, as every rank
//!    knows from the header).
//!
//! So a reduce is at most three collectives in the steady state and four when names are new. A
//! rank with no data for a key contributes identities (0, −∞).

use std::collections::BTreeMap;

use super::aggregator::{Aggregator, Kind, State};
use super::sketch::Mapping;
use super::wire::{MetricKey, fingerprint};
use crate::collective::{Collective, ReduceOp, all_gather_json};
use crate::error::{Error, Result};

impl Aggregator {
    /// Names this rank has that the layout lacks: whole keys (with their categories), and new
    /// categories of agreed categorical keys.
    fn new_names(&self) -> Vec<MetricKey> {
        let mut out = Vec::new();
        for (d, metrics) in &self.entries {
            for (m, state) in metrics {
                let cats: Vec<String> = match state {
                    State::Categorical { counts } => counts.keys().cloned().collect(),
                    _ => Vec::new(),
                };
                match self.layout.find(d, m) {
                    None => out.push(MetricKey {
                        dataset: d.clone(),
                        metric: m.clone(),
                        kind: state.kind(),
                        categories: cats,
                    }),
                    Some(k) => {
                        let fresh: Vec<String> = cats
                            .into_iter()
                            .filter(|c| k.categories.binary_search(c).is_err())
                            .collect();
                        if !fresh.is_empty() || k.kind != state.kind() {
                            out.push(MetricKey {
                                dataset: d.clone(),
                                metric: m.clone(),
                                kind: state.kind(),
                                categories: fresh,
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Folds every rank's new names into the layout: the sorted union, the same on every rank.
    /// On a kind mismatch the layout is left as it was.
    fn agree(&mut self, gathered: Vec<Vec<MetricKey>>) -> Result<()> {
        let mut keys: BTreeMap<(String, String), (Kind, usize, Vec<String>)> = self
            .layout
            .keys
            .iter()
            .cloned()
            .map(|k| ((k.dataset, k.metric), (k.kind, usize::MAX, k.categories)))
            .collect();
        for (rank, names) in gathered.into_iter().enumerate() {
            for n in names {
                let entry = keys
                    .entry((n.dataset.clone(), n.metric.clone()))
                    .or_insert((n.kind, rank, Vec::new()));
                if entry.0 != n.kind {
                    let first = if entry.1 == usize::MAX {
                        "the agreed layout".to_string()
                    } else {
                        format!("rank {}", entry.1)
                    };
                    return Err(Error::Metric {
                        dataset: n.dataset,
                        metric: n.metric,
                        reason: format!(
                            "{first} records it as {:?} but rank {rank} as {:?}",
                            entry.0, n.kind
                        ),
                    });
                }
                entry.2.extend(n.categories);
            }
        }
        self.layout.keys = keys
            .into_iter()
            .map(|((dataset, metric), (kind, _, mut categories))| {
                categories.sort();
                categories.dedup();
                MetricKey {
                    dataset,
                    metric,
                    kind,
                    categories,
                }
            })
            .collect();
        Ok(())
    }

    /// Reduces every metric over all ranks (at most three collectives in the steady state, four
    /// when some rank has names the others have not agreed on yet; see the module docs) and returns
    /// the global aggregate, the same on every rank. This aggregator keeps its own values.
    ///
    /// # Errors
    ///
    /// The collective's errors; [`Error::CollectiveMismatch`] when the ranks' layouts (metric
    /// names, kinds, categories, sketch accuracy) or reduce call numbers differ, naming the
    /// fields and the ranks; [`Error::Metric`] when ranks record a metric with different kinds.
    pub fn reduce(&mut self, collective: &dyn Collective) -> Result<Aggregator> {
        let call = self.layout.reduces.0;
        self.layout.reduces.0 += 1;
        let fresh = self.new_names();
        let mine = self.header(call);
        let mut wire = mine.wire(fresh.len());
        collective.all_reduce_u64(&mut wire, ReduceOp::Max)?;
        let spans = Header::spans(&wire);
        if spans.iter().any(|(lo, hi)| lo != hi) {
            return Err(self.header_mismatch(collective, call, &mine, &spans));
        }
        if wire[2 * FIELDS.len()] > 0 {
            self.agree(all_gather_json(collective, &fresh, "metric names")?)?;
        }
        let mut sum = self.pack_sum();
        if !sum.is_empty() {
            collective.all_reduce_f64(&mut sum, ReduceOp::Sum)?;
        }
        let mut max = self.pack_max();
        if !max.is_empty() {
            collective.all_reduce_f64(&mut max, ReduceOp::Max)?;
        }
        Ok(self.unpack(&sum, &max))
    }

    /// This rank's header for reduce call `call`.
    fn header(&self, call: u64) -> Header {
        Header([
            self.sum_len() as u64,
            self.max_len() as u64,
            fingerprint(&self.layout, &self.map),
            call,
        ])
    }

    /// The error for ranks whose headers differ, naming the fields and the ranks (one all-gather,
    /// on this error path only: every rank saw the same reduced header, so all of them call it).
    fn header_mismatch(
        &self,
        collective: &dyn Collective,
        call: u64,
        mine: &Header,
        spans: &[(u64, u64)],
    ) -> Error {
        let fields: Vec<String> = FIELDS
            .iter()
            .zip(spans)
            .filter(|(_, (lo, hi))| lo != hi)
            .map(|(name, (lo, hi))| format!("{name} ranges over {lo}..={hi}"))
            .collect();
        let ours = (mine.0, mapping(&self.map));
        let all = match all_gather_json(collective, &ours, "reduce headers") {
            Ok(all) => all,
            Err(e) => return e,
        };
        let describe = |r: usize, (fields, map): &([u64; 4], String)| {
            let differ: Vec<String> = FIELDS
                .iter()
                .zip(fields.iter().zip(&all[0].0))
                .filter(|(_, (a, b))| a != b)
                .map(|(name, (a, _))| format!("{name} {a}"))
                .collect();
            format!("rank {r} (mapping {map}; {})", differ.join(", "))
        };
        let differ: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, (h, _))| *h != all[0].0)
            .map(|(r, h)| describe(r, h))
            .collect();
        Error::CollectiveMismatch {
            op: "metric reduce".into(),
            call,
            reason: format!(
                "the ranks' reduce layouts differ (metric names, kinds, categories or sketch \
                 accuracy), or their reduce calls: {}; {} differ from rank 0 (mapping {}: {}); \
                 every rank must use the same MetricsConfig and reduce at the same points; \
                 nothing was reduced",
                fields.join(", "),
                differ.join(", "),
                all[0].1,
                FIELDS
                    .iter()
                    .zip(&all[0].0)
                    .map(|(name, v)| format!("{name} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Bytes one reduce sends per rank in the steady state (the header and both buffers).
    pub fn reduce_bytes(&self) -> usize {
        8 * (2 * FIELDS.len() + 1 + self.sum_len() + self.max_len())
    }
}

/// The header's fields, in wire order.
const FIELDS: [&str; 4] = [
    "SUM buffer length",
    "MAX buffer length",
    "layout fingerprint",
    "reduce call",
];

/// One rank's header fields.
struct Header([u64; 4]);

impl Header {
    /// The header as sent: `(x, !x)` for each field, then the count of new names.
    fn wire(&self, new_names: usize) -> Vec<u64> {
        let mut wire: Vec<u64> = self.0.iter().flat_map(|&x| [x, !x]).collect();
        wire.push(new_names as u64);
        wire
    }

    /// Each field's (minimum, maximum) over the ranks, from the MAX-reduced wire.
    fn spans(wire: &[u64]) -> Vec<(u64, u64)> {
        (0..FIELDS.len())
            .map(|i| (!wire[2 * i + 1], wire[2 * i]))
            .collect()
    }
}

/// The mapping as the error shows it.
fn mapping(map: &Mapping) -> String {
    format!("{map:?}")
}
