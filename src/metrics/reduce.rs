//! The fused cross-rank reduce: every metric packed into one SUM buffer and one MAX buffer.
//!
//! | kind | SUM slots | MAX slots |
//! |---|---|---|
//! | sum | sum | — |
//! | mean | sum, count | — |
//! | max | — | max |
//! | min | — | −min |
//! | distribution | count, sum, zero, negative buckets, positive buckets | max, −min |
//! | categorical | one count per agreed category | — |
//!
//! Slot 0 of the SUM buffer counts the names (metric keys, categories) that some rank has and the
//! agreed layout lacks. When it is 0 the reduce is two all-reduces. Otherwise the ranks all-gather
//! their new names, agree on the sorted union, and sum again over the new layout: four collectives
//! at most. A rank with no data for a key contributes identities (0, −∞).

use std::collections::BTreeMap;

use super::aggregator::{Aggregator, Kind, State};
use super::sketch::{Mapping, Sketch};
use crate::collective::{Collective, ReduceOp, all_gather_json};
use crate::error::{Error, Result};

/// One agreed metric key, and for a categorical its agreed categories (sorted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct LayoutKey {
    /// The dataset.
    pub dataset: String,
    /// The metric.
    pub metric: String,
    /// Its kind.
    pub kind: Kind,
    /// Categories, sorted (categoricals only).
    pub categories: Vec<String>,
}

/// The names every rank has agreed on, sorted: the order of the reduce buffers.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// The keys, sorted by (dataset, metric).
    pub keys: Vec<LayoutKey>,
}

impl Layout {
    fn find(&self, dataset: &str, metric: &str) -> Option<&LayoutKey> {
        self.keys
            .binary_search_by(|k| (k.dataset.as_str(), k.metric.as_str()).cmp(&(dataset, metric)))
            .ok()
            .map(|i| &self.keys[i])
    }
}

fn sum_slots(key: &LayoutKey, map: &Mapping) -> usize {
    match key.kind {
        Kind::Sum => 1,
        Kind::Mean => 2,
        Kind::Max | Kind::Min => 0,
        Kind::Distribution => 3 + 2 * map.buckets(),
        Kind::Categorical => key.categories.len(),
    }
}

fn max_slots(key: &LayoutKey) -> usize {
    match key.kind {
        Kind::Max | Kind::Min => 1,
        Kind::Distribution => 2,
        _ => 0,
    }
}

impl Aggregator {
    /// Names this rank has that the layout lacks: whole keys (with their categories), and new
    /// categories of agreed categorical keys.
    fn new_names(&self) -> Vec<LayoutKey> {
        let mut out = Vec::new();
        for (d, metrics) in &self.entries {
            for (m, state) in metrics {
                let cats: Vec<String> = match state {
                    State::Categorical { counts } => counts.keys().cloned().collect(),
                    _ => Vec::new(),
                };
                match self.layout.find(d, m) {
                    None => out.push(LayoutKey {
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
                            out.push(LayoutKey {
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

    fn pack_sum(&self, new_names: usize) -> Vec<f64> {
        let len = 1 + self
            .layout
            .keys
            .iter()
            .map(|k| sum_slots(k, &self.map))
            .sum::<usize>();
        let mut buf = Vec::with_capacity(len);
        buf.push(new_names as f64);
        let nb = self.map.buckets();
        for key in &self.layout.keys {
            let state = self.get(&key.dataset, &key.metric);
            match (key.kind, state) {
                (Kind::Sum, Some(State::Sum { sum })) => buf.push(*sum),
                (Kind::Mean, Some(State::Mean { sum, count })) => buf.extend([*sum, *count]),
                (Kind::Distribution, Some(State::Distribution { sketch })) => {
                    buf.extend([sketch.count as f64, sketch.sum, sketch.zero as f64]);
                    let at = buf.len();
                    buf.resize(at + 2 * nb, 0.0);
                    for (i, n) in &sketch.neg {
                        buf[at + (i - self.map.min_index) as usize] = *n as f64;
                    }
                    for (i, n) in &sketch.pos {
                        buf[at + nb + (i - self.map.min_index) as usize] = *n as f64;
                    }
                }
                (Kind::Categorical, Some(State::Categorical { counts })) => {
                    buf.extend(
                        key.categories
                            .iter()
                            .map(|c| counts.get(c).copied().unwrap_or(0) as f64),
                    );
                }
                // No data here: the identity.
                _ => buf.resize(buf.len() + sum_slots(key, &self.map), 0.0),
            }
        }
        debug_assert_eq!(buf.len(), len);
        buf
    }

    fn pack_max(&self) -> Vec<f64> {
        let mut buf = Vec::new();
        let none = f64::NEG_INFINITY;
        for key in &self.layout.keys {
            match self.get(&key.dataset, &key.metric) {
                Some(State::Max { max }) => buf.push(*max),
                Some(State::Min { min }) => buf.push(-min),
                Some(State::Distribution { sketch }) => {
                    buf.extend([sketch.max.unwrap_or(none), sketch.min.map_or(none, |m| -m)]);
                }
                _ => buf.resize(buf.len() + max_slots(key), none),
            }
        }
        buf
    }

    /// The aggregate the reduced buffers describe.
    fn unpack(&self, sum: &[f64], max: &[f64]) -> Aggregator {
        let mut out = Aggregator::new(self.config.clone());
        out.layout = self.layout.clone();
        let nb = self.map.buckets();
        let (mut s, mut x) = (1, 0);
        for key in &self.layout.keys {
            let state = match key.kind {
                Kind::Sum => Some(State::Sum { sum: sum[s] }),
                Kind::Mean => Some(State::Mean {
                    sum: sum[s],
                    count: sum[s + 1],
                }),
                Kind::Max => Some(State::Max { max: max[x] }).filter(|_| max[x].is_finite()),
                Kind::Min => Some(State::Min { min: -max[x] }).filter(|_| max[x].is_finite()),
                Kind::Distribution => {
                    let bucket = |i: usize| (self.map.min_index + i as i32, sum[s + 3 + i] as u64);
                    let sketch = Sketch {
                        count: sum[s] as u64,
                        sum: sum[s + 1],
                        zero: sum[s + 2] as u64,
                        max: Some(max[x]).filter(|m| m.is_finite()),
                        min: Some(-max[x + 1]).filter(|m| m.is_finite()),
                        neg: (0..nb).map(bucket).filter(|(_, n)| *n > 0).collect(),
                        pos: (nb..2 * nb)
                            .map(|i| (bucket(i).0 - nb as i32, bucket(i).1))
                            .filter(|(_, n)| *n > 0)
                            .collect(),
                    };
                    (sketch.count > 0).then_some(State::Distribution { sketch })
                }
                Kind::Categorical => {
                    let counts: BTreeMap<String, u64> = key
                        .categories
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (c.clone(), sum[s + i] as u64))
                        .filter(|(_, n)| *n > 0)
                        .collect();
                    Some(State::Categorical { counts })
                }
            };
            s += sum_slots(key, &self.map);
            x += max_slots(key);
            if let Some(state) = state {
                out.entries
                    .entry(key.dataset.clone())
                    .or_default()
                    .insert(key.metric.clone(), state);
            }
        }
        out
    }

    /// Folds every rank's new names into the layout: the sorted union, the same on every rank.
    fn agree(&mut self, gathered: Vec<Vec<LayoutKey>>) -> Result<()> {
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
                LayoutKey {
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
        Ok(self.unpack(&sum, &max))
    }

    /// Bytes one reduce sends per rank in the steady state (both buffers).
    pub fn reduce_bytes(&self) -> usize {
        8 * (self.pack_sum(0).len() + self.pack_max().len())
    }
}
