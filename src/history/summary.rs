//! The summary of a history, computed by streaming over its row groups: per rank, dataset, metric
//! and stat the last value and the minimum, mean and maximum over the run; the steps and samples
//! counted; sample statuses counted; and the K samples with the highest value of a name (the
//! hardest samples by loss).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::Path;

use super::table::{SAMPLES, STEPS};
use super::{HistoryFiles, SampleRow, for_each_group};
use crate::error::{Error, Result};

/// A value's course over the run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Series {
    /// The rank (`all` for reduced values).
    pub rank: String,
    /// The dataset.
    pub dataset: String,
    /// The metric.
    pub metric: String,
    /// The stat.
    pub stat: String,
    /// Rows.
    pub count: u64,
    /// The step of the last value.
    pub last_step: u64,
    /// The value at the last step.
    pub last: f64,
    /// The smallest value.
    pub min: f64,
    /// The mean of the values.
    pub mean: f64,
    /// The largest value.
    pub max: f64,
}

/// A summary of a history directory.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Distinct steps with step rows.
    pub steps: u64,
    /// Rows of `steps`.
    pub step_rows: u64,
    /// Rows of `samples`.
    pub samples: u64,
    /// Sample rows per status (`ok`, `skipped`, `failed`).
    pub statuses: BTreeMap<String, u64>,
    /// Per rank, dataset, metric and stat.
    pub series: Vec<Series>,
    /// The samples with the highest values of the name asked for, highest first.
    pub top: Vec<SampleRow>,
}

/// Running figures of one series.
struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last_step: u64,
    last: f64,
}

/// An entry of the top-K heap: the value, then the row's order of arrival (earlier wins ties).
#[derive(PartialEq)]
struct Ranked(f64, Reverse<u64>);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Summarizes the history in `dir` from `source`; with `top = Some((k, name))` also finds the
/// `k` `ok` samples with the highest values of `name`. Memory holds one row group, the series
/// and `k` samples.
///
/// # Errors
///
/// As [`super::read_steps`]; [`Error::History`] listing the names the samples hold when none is
/// `name`.
pub fn summarize(dir: &Path, source: HistoryFiles, top: Option<(usize, &str)>) -> Result<Summary> {
    let mut out = Summary::default();
    let mut steps = BTreeSet::new();
    let mut series: BTreeMap<(String, String, String, String), Acc> = BTreeMap::new();
    for_each_group(dir, &STEPS, source, |rows| {
        for i in 0..rows.len() {
            let step = rows.i64(1, i) as u64;
            let value = rows.f64(6, i).unwrap_or(f64::NAN);
            steps.insert(step);
            out.step_rows += 1;
            let key = (
                rows.str(2, i).to_string(),
                rows.str(3, i).to_string(),
                rows.str(4, i).to_string(),
                rows.str(5, i).to_string(),
            );
            let acc = series.entry(key).or_insert(Acc {
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                last_step: step,
                last: value,
            });
            acc.count += 1;
            acc.sum += value;
            acc.min = acc.min.min(value);
            acc.max = acc.max.max(value);
            if step >= acc.last_step {
                (acc.last_step, acc.last) = (step, value);
            }
        }
        Ok(())
    })?;
    out.steps = steps.len() as u64;
    out.series = series
        .into_iter()
        .map(|((rank, dataset, metric, stat), a)| Series {
            rank,
            dataset,
            metric,
            stat,
            count: a.count,
            last_step: a.last_step,
            last: a.last,
            min: a.min,
            mean: a.sum / a.count as f64,
            max: a.max,
        })
        .collect();
    // The top K: a min-heap of K entries, each with its row.
    let mut heap: BinaryHeap<Reverse<(Ranked, usize)>> = BinaryHeap::new();
    let mut kept: Vec<Option<SampleRow>> = Vec::new();
    let mut arrival = 0u64;
    let mut names = BTreeSet::new();
    for_each_group(dir, &SAMPLES, source, |rows| {
        for i in 0..rows.len() {
            out.samples += 1;
            *out.statuses.entry(rows.str(8, i).to_string()).or_default() += 1;
            let Some((k, name)) = top else { continue };
            if !names.contains(rows.str(6, i)) {
                names.insert(rows.str(6, i).to_string());
            }
            arrival += 1;
            let Some(value) = rows.f64(7, i) else {
                continue;
            };
            if k == 0 || rows.str(6, i) != name || rows.str(8, i) != "ok" {
                continue;
            }
            let rank = Ranked(value, Reverse(arrival));
            if heap.len() == k {
                let Reverse((low, _)) = heap.peek().expect("k > 0 entries");
                if rank <= *low {
                    continue;
                }
                let Reverse((_, slot)) = heap.pop().expect("k > 0 entries");
                kept[slot] = Some(SampleRow::from_rows(rows, i)?);
                heap.push(Reverse((rank, slot)));
            } else {
                kept.push(Some(SampleRow::from_rows(rows, i)?));
                heap.push(Reverse((rank, kept.len() - 1)));
            }
        }
        Ok(())
    })?;
    if let Some((_, name)) = top.filter(|(_, name)| !names.contains(*name)) {
        let held = if names.is_empty() {
            "it holds no per-sample values".to_string()
        } else {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            format!("the names it holds: {}", names.join(", "))
        };
        return Err(Error::History {
            path: dir.to_path_buf(),
            reason: format!("no per-sample value is named {name:?}; {held}"),
        });
    }
    let mut ranked: Vec<(Ranked, usize)> = heap.into_iter().map(|Reverse(x)| x).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0));
    out.top = ranked
        .into_iter()
        .filter_map(|(_, slot)| kept[slot].take())
        .collect();
    Ok(out)
}
