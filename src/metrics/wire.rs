//! The wire format of the fused reduce: every metric of an [`Aggregator`] packed into one SUM
//! buffer and one MAX buffer of f64, and unpacked from the reduced buffers. The host, wgpu,
//! NCCL and MPI engines all reduce these buffers.
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
//! Before them goes a fixed-size header of u64 ([`super::reduce`]): the two buffers' lengths, the
//! layout's fingerprint ([`fingerprint`]: a hash of the keys, their kinds and categories, and
//! the sketch mapping) and the reduce's call number, each as the pair `(x, !x)`, so that one MAX
//! gives every field's maximum and, as `!max(!x)`, its minimum; then the count of names that
//! this rank has and the agreed layout lacks. The ranks refuse to reduce the buffers unless
//! every field agrees: no engine ever sees buffers of different lengths.
//!
//! Counts (samples, sketch buckets, categories) travel as f64: exact up to 2^53 per slot, far
//! beyond any run's sample count.

use std::collections::BTreeMap;

use super::aggregator::{Aggregator, Kind, State};
use super::sketch::{Mapping, Sketch};

/// One agreed metric key, and for a categorical its agreed categories (sorted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub(crate) struct MetricKey {
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
pub(crate) struct MetricLayout {
    /// The keys, sorted by (dataset, metric).
    pub keys: Vec<MetricKey>,
    /// The reduces made with this layout's aggregator: the header's call number.
    #[serde(skip)]
    pub reduces: ReduceCount,
}

/// How many reduces an aggregator has made, for the header's call number: bookkeeping, not part
/// of the aggregate. It is not saved (every rank resumes from 0) and any two counts compare
/// equal, so that two aggregators holding the same values are equal however often each was
/// reduced.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReduceCount(pub u64);

impl PartialEq for ReduceCount {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl MetricLayout {
    pub(crate) fn find(&self, dataset: &str, metric: &str) -> Option<&MetricKey> {
        self.keys
            .binary_search_by(|k| (k.dataset.as_str(), k.metric.as_str()).cmp(&(dataset, metric)))
            .ok()
            .map(|i| &self.keys[i])
    }
}

pub(crate) fn sum_slots(key: &MetricKey, map: &Mapping) -> usize {
    match key.kind {
        Kind::Sum => 1,
        Kind::Mean => 2,
        Kind::Max | Kind::Min => 0,
        Kind::Distribution => 3 + 2 * map.buckets(),
        Kind::Categorical => key.categories.len(),
    }
}

pub(crate) fn max_slots(key: &MetricKey) -> usize {
    match key.kind {
        Kind::Max | Kind::Min => 1,
        Kind::Distribution => 2,
        _ => 0,
    }
}

/// The layout's fingerprint: XXH64 of its keys, kinds and categories and of the sketch mapping.
pub(crate) fn fingerprint(layout: &MetricLayout, map: &Mapping) -> u64 {
    let mut bytes = serde_json::to_vec(&layout.keys).expect("a layout serializes");
    bytes.extend_from_slice(format!("{map:?}").as_bytes());
    crate::hash::xxh64(&bytes)
}

impl Aggregator {
    /// The length of the SUM buffer of this layout.
    pub(crate) fn sum_len(&self) -> usize {
        self.layout
            .keys
            .iter()
            .map(|k| sum_slots(k, &self.map))
            .sum()
    }

    pub(crate) fn pack_sum(&self) -> Vec<f64> {
        let len = self.sum_len();
        let mut buf = Vec::with_capacity(len);
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
                    for (i, n) in sketch.neg.iter() {
                        buf[at + (i - self.map.min_index) as usize] = n as f64;
                    }
                    for (i, n) in sketch.pos.iter() {
                        buf[at + nb + (i - self.map.min_index) as usize] = n as f64;
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

    /// The length of the MAX buffer of this layout.
    pub(crate) fn max_len(&self) -> usize {
        self.layout.keys.iter().map(max_slots).sum()
    }

    pub(crate) fn pack_max(&self) -> Vec<f64> {
        let mut buf = Vec::with_capacity(self.max_len());
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
    pub(crate) fn unpack(&self, sum: &[f64], max: &[f64]) -> Aggregator {
        let mut out = Aggregator::new(self.config.clone());
        out.layout = self.layout.clone();
        let nb = self.map.buckets();
        let (mut s, mut x) = (0, 0);
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
}
