//! Reports: the nested `dataset -> metric -> value` view, and the flat `dataset/metric/stat`
//! view for loggers.

use std::collections::BTreeMap;

/// A reported value: a number, a distribution's statistics, or a categorical's counts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum ReportValue {
    /// A sum, mean, max or min.
    Number(f64),
    /// count, sum, mean, min, max, p05, p50, p95, …
    Stats(BTreeMap<String, f64>),
    /// Count per category.
    Counts(BTreeMap<String, u64>),
}

/// dataset → metric → value.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Report {
    /// The values, nested.
    pub datasets: BTreeMap<String, BTreeMap<String, ReportValue>>,
}

impl Report {
    /// One value.
    pub fn get(&self, dataset: &str, metric: &str) -> Option<&ReportValue> {
        self.datasets.get(dataset)?.get(metric)
    }

    /// A number, if the metric reports one.
    pub fn number(&self, dataset: &str, metric: &str) -> Option<f64> {
        match self.get(dataset, metric)? {
            ReportValue::Number(v) => Some(*v),
            _ => None,
        }
    }

    /// The flat view for loggers: `dataset/metric` for numbers, `dataset/metric/stat` for
    /// distributions and categoricals.
    pub fn flat(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (d, metrics) in &self.datasets {
            for (m, v) in metrics {
                match v {
                    ReportValue::Number(x) => {
                        out.insert(format!("{d}/{m}"), *x);
                    }
                    ReportValue::Stats(stats) => {
                        out.extend(stats.iter().map(|(s, x)| (format!("{d}/{m}/{s}"), *x)));
                    }
                    ReportValue::Counts(counts) => {
                        out.extend(
                            counts
                                .iter()
                                .map(|(s, n)| (format!("{d}/{m}/{s}"), *n as f64)),
                        );
                    }
                }
            }
        }
        out
    }
}
