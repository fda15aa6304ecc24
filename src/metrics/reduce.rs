//! The fused cross-rank reduce over the buffers of [`super::wire`].
//!
//! Slot 0 of the SUM buffer counts the names (metric keys, categories) that some rank has and the
//! agreed layout lacks. When it is 0 the reduce is two all-reduces. Otherwise the ranks all-gather
//! their new names, agree on the sorted union, and sum again over the new layout: four collectives
//! at most. A rank with no data for a key contributes identities (0, −∞).

use std::collections::BTreeMap;

use super::aggregator::{Aggregator, Kind, State};
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
    fn agree(&mut self, gathered: Vec<Vec<MetricKey>>) -> Result<()> {
        let mut keys: BTreeMap<(String, String), (Kind, usize, Vec<String>)> = self
            .layout
            .keys
            .drain(..)
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

    /// Reduces every metric over all ranks with at most two all-reduces in the steady state
    /// (four collectives when some rank has names the others have not agreed on yet) and returns
    /// the global aggregate, the same on every rank. This aggregator keeps its own values.
    ///
    /// # Errors
    ///
    /// The collective's errors; [`Error::Metric`] when ranks record a metric with different
    /// kinds.
    pub fn reduce(&mut self, collective: &dyn Collective) -> Result<Aggregator> {
        let fresh = self.new_names();
        let mut sum = self.pack_sum(fresh.len());
        collective.all_reduce_f64(&mut sum, ReduceOp::Sum)?;
        if sum[0] > 0.0 {
            self.agree(all_gather_json(collective, &fresh, "metric names")?)?;
            sum = self.pack_sum(0);
            collective.all_reduce_f64(&mut sum, ReduceOp::Sum)?;
        }
        let mut max = self.pack_max();
        collective.all_reduce_f64(&mut max, ReduceOp::Max)?;
        if max[0] != -max[1] {
            return Err(self.layout_mismatch(collective));
        }
        Ok(self.unpack(&sum, &max))
    }

    /// The error for ranks whose layouts differ, naming them (one all-gather, on this error
    /// path only).
    fn layout_mismatch(&self, collective: &dyn Collective) -> Error {
        let mine = fingerprint(&self.layout, &self.map);
        let all = match all_gather_json(collective, &(mine, format!("{:?}", self.map)), "layouts") {
            Ok(all) => all,
            Err(e) => return e,
        };
        let differ: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(_, (h, _))| *h != all[0].0)
            .map(|(r, (_, map))| format!("rank {r} (mapping {map})"))
            .collect();
        Error::CollectiveMismatch {
            op: "metric reduce".into(),
            call: 0,
            reason: format!(
                "the ranks' reduce layouts differ (metric names, kinds, categories or sketch \
                 accuracy): {} differ from rank 0 (mapping {}); every rank must use the same \
                 MetricsConfig",
                differ.join(", "),
                all[0].1
            ),
        }
    }

    /// Bytes one reduce sends per rank in the steady state (both buffers).
    pub fn reduce_bytes(&self) -> usize {
        8 * (self.pack_sum(0).len() + self.pack_max().len())
    }
}
