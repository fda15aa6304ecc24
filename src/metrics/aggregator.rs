//! The aggregator: metric state keyed by (dataset, metric), updated per sample or merged from
//! per-batch partials, reported nested or flat, serialized exactly.

use std::collections::BTreeMap;

use super::report::{Report, ReportValue};
use super::sketch::{Mapping, Sketch};
use super::wire::MetricLayout;
use crate::error::{Error, Result};

/// How values of a metric combine.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The total.
    Sum,
    /// The mean, weighted by count across batches and ranks.
    Mean,
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
    /// Count, sum, mean, min, max and percentiles, from a sketch.
    Distribution,
    /// Counts per category name.
    Categorical,
}

/// A metric's value: a number, or for [`Kind::Categorical`] a category name.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number (finite).
    Number(f64),
    /// A category name.
    Category(String),
}

/// One observation: (dataset, name, value, kind).
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// The dataset it belongs to.
    pub dataset: String,
    /// The metric's name.
    pub name: String,
    /// The value.
    pub value: Value,
    /// How values combine.
    pub kind: Kind,
}

impl Metric {
    /// A numeric observation.
    pub fn number(
        dataset: impl Into<String>,
        name: impl Into<String>,
        value: f64,
        kind: Kind,
    ) -> Self {
        Metric {
            dataset: dataset.into(),
            name: name.into(),
            value: Value::Number(value),
            kind,
        }
    }

    /// A categorical observation.
    pub fn category(
        dataset: impl Into<String>,
        name: impl Into<String>,
        category: impl Into<String>,
    ) -> Self {
        Metric {
            dataset: dataset.into(),
            name: name.into(),
            value: Value::Category(category.into()),
            kind: Kind::Categorical,
        }
    }
}

/// The state of one metric.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum State {
    /// [`Kind::Sum`].
    Sum {
        /// The total.
        sum: f64,
    },
    /// [`Kind::Mean`]: sum and count, never a mean of means.
    Mean {
        /// Sum of values.
        sum: f64,
        /// Number of values.
        count: f64,
    },
    /// [`Kind::Max`].
    Max {
        /// The largest value.
        max: f64,
    },
    /// [`Kind::Min`].
    Min {
        /// The smallest value.
        min: f64,
    },
    /// [`Kind::Distribution`].
    Distribution {
        /// The sketch.
        sketch: Sketch,
    },
    /// [`Kind::Categorical`].
    Categorical {
        /// Count per category.
        counts: BTreeMap<String, u64>,
    },
}

impl State {
    /// The kind of this state.
    pub fn kind(&self) -> Kind {
        match self {
            State::Sum { .. } => Kind::Sum,
            State::Mean { .. } => Kind::Mean,
            State::Max { .. } => Kind::Max,
            State::Min { .. } => Kind::Min,
            State::Distribution { .. } => Kind::Distribution,
            State::Categorical { .. } => Kind::Categorical,
        }
    }

    fn empty(kind: Kind) -> State {
        match kind {
            Kind::Sum => State::Sum { sum: 0.0 },
            Kind::Mean => State::Mean {
                sum: 0.0,
                count: 0.0,
            },
            Kind::Max => State::Max {
                max: f64::NEG_INFINITY,
            },
            Kind::Min => State::Min { min: f64::INFINITY },
            Kind::Distribution => State::Distribution {
                sketch: Sketch::default(),
            },
            Kind::Categorical => State::Categorical {
                counts: BTreeMap::new(),
            },
        }
    }

    /// Merges `other` (of the same kind) into this state.
    fn merge(&mut self, other: &State) {
        match (self, other) {
            (State::Sum { sum }, State::Sum { sum: s }) => *sum += s,
            (State::Mean { sum, count }, State::Mean { sum: s, count: c }) => {
                *sum += s;
                *count += c;
            }
            (State::Max { max }, State::Max { max: m }) => *max = max.max(*m),
            (State::Min { min }, State::Min { min: m }) => *min = min.min(*m),
            (State::Distribution { sketch }, State::Distribution { sketch: s }) => sketch.merge(s),
            (State::Categorical { counts }, State::Categorical { counts: c }) => {
                for (name, n) in c {
                    *counts.entry(name.clone()).or_default() += n;
                }
            }
            _ => unreachable!("callers check that the kinds agree"),
        }
    }
}

/// Aggregation settings; every rank must use the same.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsConfig {
    /// Relative accuracy of distribution sketches.
    pub alpha: f64,
    /// Percentiles reported for distributions, in (0, 1].
    pub percentiles: Vec<f64>,
}

impl MetricsConfig {
    /// The finest sketch accuracy accepted: finer ones need more buckets than a reduce should
    /// carry (about 245 000 per side at this accuracy).
    pub const MIN_ALPHA: f64 = 1e-4;
    /// The coarsest sketch accuracy accepted.
    pub const MAX_ALPHA: f64 = 0.5;
    /// The most percentiles a distribution reports.
    pub const MAX_PERCENTILES: usize = 64;

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an accuracy outside [`Self::MIN_ALPHA`]..=[`Self::MAX_ALPHA`], a
    /// percentile outside (0, 1], or more than [`Self::MAX_PERCENTILES`] of them.
    pub fn check(&self) -> Result<()> {
        if !(Self::MIN_ALPHA..=Self::MAX_ALPHA).contains(&self.alpha) {
            return Err(Error::Config(format!(
                "metrics alpha {}: the sketch accuracy must lie in [{}, {}]",
                self.alpha,
                Self::MIN_ALPHA,
                Self::MAX_ALPHA
            )));
        }
        if self.percentiles.len() > Self::MAX_PERCENTILES {
            return Err(Error::Config(format!(
                "metrics percentiles: {} given, at most {}",
                self.percentiles.len(),
                Self::MAX_PERCENTILES
            )));
        }
        if let Some(q) = self.percentiles.iter().find(|q| !(**q > 0.0 && **q <= 1.0)) {
            return Err(Error::Config(format!(
                "metrics percentile {q}: percentiles are fractions in (0, 1] (0.95 for p95)"
            )));
        }
        Ok(())
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            alpha: 0.01,
            percentiles: vec![0.05, 0.5, 0.95],
        }
    }
}

/// The serializable state of an [`Aggregator`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AggregatorState {
    /// The settings.
    pub config: MetricsConfig,
    /// dataset → metric → state.
    pub entries: BTreeMap<String, BTreeMap<String, State>>,
    /// The names agreed with the other ranks at the last reduce.
    pub(crate) layout: MetricLayout,
}

impl AggregatorState {
    /// Checks that the state could have been made by an aggregator: valid settings, finite
    /// values, sketch buckets inside the mapping's range and adding up to their counts, and a
    /// sorted layout. A state read from a checkpoint is checked before use.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the field (`metrics.entries.DATASET.METRIC`, …).
    pub fn check(&self) -> Result<()> {
        self.config
            .check()
            .map_err(|e| Error::checkpoint("metrics.config", e.to_string()))?;
        let map = Mapping::new(self.config.alpha);
        for (d, metrics) in &self.entries {
            for (m, state) in metrics {
                check_state(state, &map)
                    .map_err(|why| Error::checkpoint(format!("metrics.entries.{d}.{m}"), why))?;
            }
        }
        let keys = &self.layout.keys;
        for (i, k) in keys.iter().enumerate() {
            let field = || format!("metrics.layout.keys[{i}]");
            if i > 0 && (&keys[i - 1].dataset, &keys[i - 1].metric) >= (&k.dataset, &k.metric) {
                return Err(Error::checkpoint(field(), "keys are not sorted and unique"));
            }
            if k.categories.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::checkpoint(
                    field(),
                    "categories are not sorted and unique",
                ));
            }
            if !k.categories.is_empty() && k.kind != Kind::Categorical {
                return Err(Error::checkpoint(
                    field(),
                    "only a categorical has categories",
                ));
            }
        }
        Ok(())
    }
}

/// Why a metric state could not have been recorded, if it could not.
fn check_state(state: &State, map: &Mapping) -> std::result::Result<(), String> {
    let finite = |what: &str, v: f64| {
        if v.is_finite() {
            Ok(())
        } else {
            Err(format!("{what} {v} is not finite"))
        }
    };
    match state {
        State::Sum { sum } => finite("sum", *sum),
        State::Mean { sum, count } => {
            finite("sum", *sum)?;
            finite("count", *count)?;
            if *count < 0.0 {
                return Err(format!("count {count} is negative"));
            }
            Ok(())
        }
        State::Max { max } if max.is_nan() || *max == f64::INFINITY => {
            Err(format!("max {max} is not a recorded value"))
        }
        State::Min { min } if min.is_nan() || *min == f64::NEG_INFINITY => {
            Err(format!("min {min} is not a recorded value"))
        }
        State::Max { .. } | State::Min { .. } | State::Categorical { .. } => Ok(()),
        State::Distribution { sketch } => {
            finite("sum", sketch.sum)?;
            let range = map.min_index..=map.max_index;
            let mut total = sketch.zero as u128;
            for (side, buckets) in [("pos", &sketch.pos), ("neg", &sketch.neg)] {
                if let Some((i, _)) = buckets.iter().find(|(i, _)| !range.contains(i)) {
                    return Err(format!(
                        "{side} bucket {i} lies outside {}..={} for alpha {}",
                        map.min_index, map.max_index, map.alpha
                    ));
                }
                total += buckets.iter().map(|(_, n)| n as u128).sum::<u128>();
            }
            if total != sketch.count as u128 {
                return Err(format!(
                    "the buckets hold {total} values but the count is {}",
                    sketch.count
                ));
            }
            match (sketch.min, sketch.max) {
                (None, None) if sketch.count == 0 => Ok(()),
                (Some(lo), Some(hi)) if sketch.count > 0 && lo.is_finite() && hi.is_finite() => {
                    if lo <= hi {
                        Ok(())
                    } else {
                        Err(format!("min {lo} is above max {hi}"))
                    }
                }
                _ => Err("min and max do not fit the count".into()),
            }
        }
    }
}

/// Metric state keyed by (dataset, metric).
///
/// # Example
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// use shardflow::metrics::{Aggregator, Kind, ReportValue};
/// let mut agg = Aggregator::default();
/// agg.record("web", "tokens_seen", Kind::Sum, 300.0)?;
/// agg.record("web", "tokens_seen", Kind::Sum, 200.0)?;
/// agg.record("web", "loss", Kind::Mean, 2.0)?;
/// agg.record("web", "loss", Kind::Mean, 4.0)?;
/// agg.record_category("web", "language", "en")?;
/// let report = agg.report();
/// assert_eq!(report.number("web", "tokens_seen"), Some(500.0));
/// assert_eq!(report.number("web", "loss"), Some(3.0));
/// assert_eq!(report.flat()["web/language/en"], 1.0);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregator {
    pub(super) config: MetricsConfig,
    pub(super) map: Mapping,
    pub(super) entries: BTreeMap<String, BTreeMap<String, State>>,
    pub(super) layout: MetricLayout,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new(MetricsConfig::default())
    }
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new(config: MetricsConfig) -> Self {
        Aggregator {
            map: Mapping::new(config.alpha),
            config,
            entries: BTreeMap::new(),
            layout: MetricLayout::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// The sketch mapping (for building sketches to merge with [`Aggregator::add_sketch`]).
    pub fn mapping(&self) -> &Mapping {
        &self.map
    }

    /// The state of one metric.
    pub fn get(&self, dataset: &str, metric: &str) -> Option<&State> {
        self.entries.get(dataset)?.get(metric)
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Runs `f` on the state of `dataset`'s `metric`, created empty of `kind` when new.
    ///
    /// A metric recorded before (every metric of every batch after the first) costs one map
    /// lookup per level. The state is lent to `f` rather than returned: a returned borrow
    /// would keep the first lookup's borrow alive over the insert of a new metric, which the
    /// borrow checker refuses, and was worked around with a second lookup per level.
    ///
    /// # Errors
    ///
    /// [`Error::Metric`] when the metric holds another kind.
    fn with_slot<R>(
        &mut self,
        dataset: &str,
        metric: &str,
        kind: Kind,
        f: impl FnOnce(&mut State) -> R,
    ) -> Result<R> {
        if let Some(state) = self
            .entries
            .get_mut(dataset)
            .and_then(|m| m.get_mut(metric))
        {
            return of_kind(state, dataset, metric, kind).map(f);
        }
        let state = self
            .entries
            .entry(dataset.to_string())
            .or_default()
            .entry(metric.to_string())
            .or_insert_with(|| State::empty(kind));
        of_kind(state, dataset, metric, kind).map(f)
    }

    /// Records a numeric value.
    ///
    /// # Errors
    ///
    /// [`Error::Metric`] for a non-finite value, for [`Kind::Categorical`], or when the metric was
    /// recorded with another kind before.
    pub fn record(&mut self, dataset: &str, metric: &str, kind: Kind, value: f64) -> Result<()> {
        let bad = |reason: String| Error::Metric {
            dataset: dataset.into(),
            metric: metric.into(),
            reason,
        };
        finite(dataset, metric, value)?;
        let map = self.map;
        self.with_slot(dataset, metric, kind, |state| {
            match state {
                State::Sum { sum } => *sum += value,
                State::Mean { sum, count } => {
                    *sum += value;
                    *count += 1.0;
                }
                State::Max { max } => *max = max.max(value),
                State::Min { min } => *min = min.min(value),
                State::Distribution { sketch } => sketch.add(&map, value),
                State::Categorical { .. } => {
                    return Err(bad(
                        "a categorical metric takes category names, not numbers".into(),
                    ));
                }
            }
            Ok(())
        })?
    }

    /// Counts one occurrence of `category`.
    ///
    /// # Errors
    ///
    /// [`Error::Metric`] when the metric was recorded with another kind before.
    pub fn record_category(&mut self, dataset: &str, metric: &str, category: &str) -> Result<()> {
        self.record_categories(dataset, metric, std::iter::once(category))
    }

    /// Counts one occurrence of each of `categories`, looking the metric up once. With none,
    /// the metric still exists from then on (with no counts).
    ///
    /// # Errors
    ///
    /// As [`Aggregator::record_category`].
    pub fn record_categories<'c>(
        &mut self,
        dataset: &str,
        metric: &str,
        categories: impl Iterator<Item = &'c str>,
    ) -> Result<()> {
        self.with_slot(dataset, metric, Kind::Categorical, |state| {
            if let State::Categorical { counts } = state {
                for category in categories {
                    match counts.get_mut(category) {
                        Some(n) => *n += 1,
                        None => {
                            counts.insert(category.to_string(), 1);
                        }
                    }
                }
            }
        })
    }

    /// Records one observation.
    ///
    /// # Errors
    ///
    /// As [`Aggregator::record`] and [`Aggregator::record_category`]; a category value with a
    /// numeric kind (or the reverse) is an [`Error::Metric`].
    pub fn update(&mut self, m: &Metric) -> Result<()> {
        match (&m.value, m.kind) {
            (Value::Category(c), Kind::Categorical) => self.record_category(&m.dataset, &m.name, c),
            (Value::Number(v), kind) => self.record(&m.dataset, &m.name, kind, *v),
            (Value::Category(_), kind) => Err(Error::Metric {
                dataset: m.dataset.clone(),
                metric: m.name.clone(),
                reason: format!("a category name given to a {kind:?} metric"),
            }),
        }
    }

    /// Records many values of a distribution metric (finite values; others are an error).
    ///
    /// # Errors
    ///
    /// As [`Aggregator::record`].
    pub fn record_all(
        &mut self,
        dataset: &str,
        metric: &str,
        values: impl Iterator<Item = f64>,
    ) -> Result<()> {
        let map = self.map;
        self.with_slot(dataset, metric, Kind::Distribution, |state| {
            if let State::Distribution { sketch } = state {
                for v in values {
                    sketch.add(&map, finite(dataset, metric, v)?);
                }
            }
            Ok(())
        })?
    }

    /// Merges a whole sketch into a distribution metric.
    ///
    /// # Errors
    ///
    /// [`Error::Metric`] on a kind conflict.
    pub fn add_sketch(&mut self, dataset: &str, metric: &str, sketch: &Sketch) -> Result<()> {
        self.with_slot(dataset, metric, Kind::Distribution, |state| {
            if let State::Distribution { sketch: s } = state {
                s.merge(sketch);
            }
        })
    }

    /// Adds `count` values summing to `sum` to the MEAN metric `metric` (the shader sink's loss
    /// sketches).
    #[cfg(all(feature = "burn", feature = "wgpu"))]
    pub(crate) fn add_mean(
        &mut self,
        dataset: &str,
        metric: &str,
        sum: f64,
        count: f64,
    ) -> Result<()> {
        finite(dataset, metric, sum)?;
        self.with_slot(dataset, metric, Kind::Mean, |state| {
            if let State::Mean { sum: s, count: c } = state {
                *s += sum;
                *c += count;
            }
        })
    }

    /// Merges another aggregator (a per-batch partial, or another rank's state).
    ///
    /// # Errors
    ///
    /// [`Error::Metric`] on a kind conflict, or when the sketch accuracies differ.
    pub fn merge(&mut self, other: &Aggregator) -> Result<()> {
        if other.config.alpha != self.config.alpha {
            return Err(Error::Metric {
                dataset: "*".into(),
                metric: "*".into(),
                reason: format!(
                    "sketch accuracy {} cannot merge with {}",
                    other.config.alpha, self.config.alpha
                ),
            });
        }
        for (d, metrics) in &other.entries {
            for (m, state) in metrics {
                self.with_slot(d, m, state.kind(), |s| s.merge(state))?;
            }
        }
        Ok(())
    }

    /// Forgets every value (the names agreed with other ranks are kept).
    pub fn reset(&mut self) {
        self.entries.clear();
    }

    /// The nested report.
    pub fn report(&self) -> Report {
        let mut report = Report::default();
        for (d, metrics) in &self.entries {
            let out: BTreeMap<String, ReportValue> = metrics
                .iter()
                .filter_map(|(m, s)| Some((m.clone(), self.report_value(s)?)))
                .collect();
            if !out.is_empty() {
                report.datasets.insert(d.clone(), out);
            }
        }
        report
    }

    fn report_value(&self, s: &State) -> Option<ReportValue> {
        Some(match s {
            State::Sum { sum } => ReportValue::Number(*sum),
            State::Mean { sum, count } => ReportValue::Number((*count > 0.0).then(|| sum / count)?),
            State::Max { max } => ReportValue::Number(Some(*max).filter(|m| m.is_finite())?),
            State::Min { min } => ReportValue::Number(Some(*min).filter(|m| m.is_finite())?),
            State::Distribution { sketch } => {
                let mut stats = BTreeMap::new();
                stats.insert("count".into(), sketch.count as f64);
                stats.insert("sum".into(), sketch.sum);
                stats.insert("mean".into(), sketch.mean()?);
                stats.insert("min".into(), sketch.min?);
                stats.insert("max".into(), sketch.max?);
                for &q in &self.config.percentiles {
                    stats.insert(percentile_name(q), sketch.quantile(&self.map, q)?);
                }
                ReportValue::Stats(stats)
            }
            State::Categorical { counts } => ReportValue::Counts(
                counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(c, n)| (c.clone(), *n))
                    .collect(),
            ),
        })
    }

    /// The serializable state.
    pub fn state(&self) -> AggregatorState {
        AggregatorState {
            config: self.config.clone(),
            entries: self.entries.clone(),
            layout: self.layout.clone(),
        }
    }

    /// An aggregator from a saved state; `from_state(a.state()) == a`.
    pub fn from_state(state: AggregatorState) -> Self {
        let mut agg = Aggregator::new(state.config);
        agg.entries = state.entries;
        agg.layout = state.layout;
        agg
    }
}

/// `value`, or [`Error::Metric`] when it is not finite.
/// `state`, if it holds `kind`.
///
/// # Errors
///
/// [`Error::Metric`] naming both kinds when it holds another.
fn of_kind<'s>(
    state: &'s mut State,
    dataset: &str,
    metric: &str,
    kind: Kind,
) -> Result<&'s mut State> {
    if state.kind() != kind {
        return Err(Error::Metric {
            dataset: dataset.into(),
            metric: metric.into(),
            reason: format!("recorded as {:?} before, now as {kind:?}", state.kind()),
        });
    }
    Ok(state)
}

#[inline]
fn finite(dataset: &str, metric: &str, value: f64) -> Result<f64> {
    if value.is_finite() {
        return Ok(value);
    }
    Err(Error::Metric {
        dataset: dataset.into(),
        metric: metric.into(),
        reason: format!("value {value} is not finite"),
    })
}

/// `p05`, `p50`, `p95`, `p99.9`.
fn percentile_name(q: f64) -> String {
    let pct = q * 100.0;
    if (pct - pct.round()).abs() < 1e-9 {
        format!("p{:02}", pct.round() as u64)
    } else {
        format!("p{pct}")
    }
}
