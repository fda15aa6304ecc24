//! The distribution sketch: logarithmic buckets with relative accuracy alpha over a fixed range,
//! a zero bucket and a negative side, plus exact count, sum, min and max. Merging adds buckets,
//! so a cross-rank merge is one SUM all-reduce over a fixed layout.
//!
//! The bucket of a value comes from its bits: `floor(k * (exponent + p(mantissa)))`, where
//! `p(m) = 6/35 m^3 - 3/5 m^2 + 10/7 m` approximates `log2(1 + m)` on `[0, 1)` (DDSketch's cubic
//! interpolation) and `k` is chosen so that no bucket spans more than a factor
//! `gamma = (1 + alpha) / (1 - alpha)`. A device computes the same index with the same few
//! multiply-adds, so host and device sketches are identical.

use std::collections::BTreeMap;

/// The smallest magnitude with a bucket of its own; smaller values count as zero.
pub const MIN_VALUE: f64 = 1e-9;
/// The largest magnitude with a bucket of its own; larger values fall in the top bucket (min, max
/// and sum stay exact).
pub const MAX_VALUE: f64 = 1e12;

const A: f64 = 6.0 / 35.0;
const B: f64 = -3.0 / 5.0;
const C: f64 = 10.0 / 7.0;

/// The value-to-bucket mapping for one relative accuracy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mapping {
    /// The relative accuracy.
    pub alpha: f64,
    /// Buckets per unit of (approximate) log2.
    pub k: f64,
    /// The bucket of [`MIN_VALUE`].
    pub min_index: i32,
    /// The bucket of [`MAX_VALUE`].
    pub max_index: i32,
}

/// `p(m) ≈ log2(1 + m)`, exact at 0 and 1, increasing.
fn p(m: f64) -> f64 {
    ((A * m + B) * m + C) * m
}

fn p_prime(m: f64) -> f64 {
    (3.0 * A * m + 2.0 * B) * m + C
}

/// The widest true log2 span per unit of p: the max over m of (d log2(1+m)/dm) / p'(m), with a
/// small margin. It depends on p alone, so it is computed once.
fn widest_span() -> f64 {
    static WIDEST: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *WIDEST.get_or_init(|| {
        let steps = 4096;
        (0..=steps)
            .map(|i| {
                let m = i as f64 / steps as f64;
                (1.0 / ((1.0 + m) * std::f64::consts::LN_2)) / p_prime(m)
            })
            .fold(0.0, f64::max)
            * 1.0001
    })
}

impl Mapping {
    /// The mapping for relative accuracy `alpha` (0 < alpha < 1).
    pub fn new(alpha: f64) -> Self {
        let gamma = (1.0 + alpha) / (1.0 - alpha);
        let k = widest_span() / gamma.log2();
        let mut map = Mapping {
            alpha,
            k,
            min_index: 0,
            max_index: 0,
        };
        map.min_index = map.index(MIN_VALUE);
        map.max_index = map.index(MAX_VALUE);
        map
    }

    /// Buckets on each side of zero.
    pub fn buckets(&self) -> usize {
        (self.max_index - self.min_index + 1) as usize
    }

    /// The bucket of a magnitude in `[MIN_VALUE, MAX_VALUE]`, from its bits.
    pub fn index(&self, v: f64) -> i32 {
        let bits = v.to_bits();
        let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
        let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | 0x3ff0_0000_0000_0000) - 1.0;
        ((exponent as f64 + p(m)) * self.k).floor() as i32
    }

    /// The magnitude where bucket `i` starts.
    fn lower(&self, i: i32) -> f64 {
        let l = i as f64 / self.k;
        let e = l.floor();
        let target = l - e;
        // Invert p on [0, 1) by bisection: p is increasing.
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..60 {
            let mid = 0.5 * (lo + hi);
            if p(mid) < target { lo = mid } else { hi = mid }
        }
        (1.0 + 0.5 * (lo + hi)) * e.exp2()
    }

    /// The estimate for bucket `i`: within alpha of every value in it.
    pub fn value(&self, i: i32) -> f64 {
        let (lo, hi) = (self.lower(i), self.lower(i + 1));
        2.0 * lo * hi / (lo + hi)
    }
}

/// The smaller of two values in the total order (-0.0 below 0.0).
fn total_min(a: f64, b: f64) -> f64 {
    if b.total_cmp(&a).is_lt() { b } else { a }
}

/// The larger of two values in the total order.
fn total_max(a: f64, b: f64) -> f64 {
    if b.total_cmp(&a).is_gt() { b } else { a }
}

/// A mergeable sketch of a distribution.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sketch {
    /// Values recorded.
    pub count: u64,
    /// Their exact sum.
    pub sum: f64,
    /// The exact minimum (`None` while empty).
    pub min: Option<f64>,
    /// The exact maximum (`None` while empty).
    pub max: Option<f64>,
    /// Values with magnitude below [`MIN_VALUE`].
    pub zero: u64,
    /// Positive values by bucket.
    #[serde(with = "pairs")]
    pub pos: BTreeMap<i32, u64>,
    /// Negative values by bucket of their magnitude.
    #[serde(with = "pairs")]
    pub neg: BTreeMap<i32, u64>,
}

/// Buckets as `[index, count]` pairs: JSON map keys are strings, which a tagged enum around the
/// sketch could not turn back into integers.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<i32, u64>, s: S) -> Result<S::Ok, S::Error> {
        m.iter()
            .map(|(i, n)| (*i, *n))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<i32, u64>, D::Error> {
        Ok(Vec::<(i32, u64)>::deserialize(d)?.into_iter().collect())
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            count: 0,
            sum: 0.0,
            min: None,
            max: None,
            zero: 0,
            pos: BTreeMap::new(),
            neg: BTreeMap::new(),
        }
    }
}

impl Sketch {
    /// Records a finite value.
    pub fn add(&mut self, map: &Mapping, v: f64) {
        self.count += 1;
        self.sum += v;
        // The total order (-0.0 below 0.0), so that min and max do not depend on the order of
        // the values, as on a device.
        self.min = Some(self.min.map_or(v, |m| total_min(m, v)));
        self.max = Some(self.max.map_or(v, |m| total_max(m, v)));
        let mag = v.abs();
        if mag < MIN_VALUE {
            self.zero += 1;
            return;
        }
        let i = map.index(mag.min(MAX_VALUE));
        *if v > 0.0 {
            &mut self.pos
        } else {
            &mut self.neg
        }
        .entry(i)
        .or_default() += 1;
    }

    /// Adds `other` into this sketch.
    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(total_min(a, b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(total_max(a, b)),
            (a, b) => a.or(b),
        };
        self.zero += other.zero;
        for (i, n) in &other.pos {
            *self.pos.entry(*i).or_default() += n;
        }
        for (i, n) in &other.neg {
            *self.neg.entry(*i).or_default() += n;
        }
    }

    /// The mean, or `None` while empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// The nearest-rank `q`-quantile (the smallest value with at least `q` of the values at or
    /// below it), within alpha of the exact one; `None` while empty.
    pub fn quantile(&self, map: &Mapping, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        let found = self
            .neg
            .iter()
            .rev()
            .map(|(&i, &n)| (-map.value(i), n))
            .chain(std::iter::once((0.0, self.zero)))
            .chain(self.pos.iter().map(|(&i, &n)| (map.value(i), n)))
            .find(|&(_, n)| {
                seen += n;
                seen >= rank
            })
            .map(|(v, _)| v)?;
        Some(found.clamp(self.min?, self.max?))
    }
}
