//! The distribution sketch: logarithmic buckets with relative accuracy alpha over a fixed range,
//! a zero bucket and a negative side, plus exact count, sum, min and max. Merging adds buckets,
//! so a cross-rank merge is one SUM all-reduce over a fixed layout.
//!
//! The bucket of a value comes from its bits: `floor(k * (exponent + p(mantissa)))`, where
//! `p(m) = 6/35 m^3 - 3/5 m^2 + 10/7 m` approximates `log2(1 + m)` on `[0, 1)` (DDSketch's cubic
//! interpolation) and `k` is chosen so that no bucket spans more than a factor
//! `gamma = (1 + alpha) / (1 - alpha)`. A device computes the same index with the same few
//! multiply-adds, so host and device sketches are identical.

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
        floor_i32((exponent as f64 + p(m)) * self.k)
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

/// `x.floor() as i32`, saturating, for every `x` (NaN gives 0), without a call: baseline
/// x86-64 has no rounding instruction, so `floor` is a call into libm, once per value a sketch
/// records. Truncation, then one step down for a negative value with a fraction.
#[inline]
fn floor_i32(x: f64) -> i32 {
    let t = x as i32;
    if (t as f64) > x {
        t.saturating_sub(1)
    } else {
        t
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
    pub pos: Buckets,
    /// Negative values by bucket of their magnitude.
    pub neg: Buckets,
}

/// The widest span of bucket indices one side of a sketch may hold: what a mapping at the finest
/// accuracy allowed spans over [`MIN_VALUE`]..[`MAX_VALUE`], with room. A deserialized sketch
/// wider than this is refused rather than allocated.
pub const MAX_SPAN: usize = 1 << 20;

/// Counts by bucket index over the span of indices seen, densely: adding a value is an index
/// and an increment, not a tree walk. Two are equal when their non-zero counts are; serialized as
/// `[index, count]` pairs of the non-zero counts, in index order.
#[derive(Clone, Debug, Default)]
pub struct Buckets {
    /// The index of `counts[0]`.
    lo: i32,
    counts: Vec<u64>,
}

impl Buckets {
    /// Adds `n` to bucket `i`.
    #[inline]
    pub fn add(&mut self, i: i32, n: u64) {
        self.grow_to(i);
        let at = self.slot(i);
        self.counts[at] += n;
    }

    /// Where bucket `i` sits in `counts` (past its end when outside the span).
    #[inline]
    fn slot(&self, i: i32) -> usize {
        i.wrapping_sub(self.lo) as u32 as usize
    }

    /// Widens the span to hold bucket `i`, if it does not yet.
    #[inline]
    fn grow_to(&mut self, i: i32) {
        if self.slot(i) >= self.counts.len() {
            self.grow(i);
        }
    }

    /// Widens the span to hold bucket `i`.
    #[cold]
    fn grow(&mut self, i: i32) {
        if self.counts.is_empty() {
            self.lo = i;
            self.counts.push(0);
        } else if i < self.lo {
            let extra = (self.lo - i) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, extra));
            self.lo = i;
        } else {
            self.counts.resize((i - self.lo) as usize + 1, 0);
        }
    }

    /// The count of bucket `i`.
    pub fn get(&self, i: i32) -> u64 {
        self.counts.get(self.slot(i)).copied().unwrap_or(0)
    }

    /// The non-zero buckets as `(index, count)`, in index order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (i32, u64)> + '_ {
        let lo = self.lo;
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(move |(j, n)| (lo + j as i32, *n))
    }

    /// Whether every count is zero.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&n| n == 0)
    }

    /// The lowest and highest non-zero bucket.
    pub fn range(&self) -> Option<(i32, i32)> {
        Some((self.iter().next()?.0, self.iter().next_back()?.0))
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Buckets) {
        if let Some(last) = other.counts.len().checked_sub(1) {
            // Widen once to both ends of the other's span, then add element-wise.
            self.grow_to(other.lo);
            self.grow_to(other.lo + last as i32);
            let shift = (other.lo - self.lo) as usize;
            for (c, n) in self.counts[shift..].iter_mut().zip(&other.counts) {
                *c += n;
            }
        }
    }
}

impl PartialEq for Buckets {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl FromIterator<(i32, u64)> for Buckets {
    fn from_iter<I: IntoIterator<Item = (i32, u64)>>(iter: I) -> Self {
        let mut b = Buckets::default();
        for (i, n) in iter {
            b.add(i, n);
        }
        b
    }
}

impl serde::Serialize for Buckets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Buckets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(i32, u64)>::deserialize(d)?;
        let lo = pairs.iter().map(|p| p.0).min();
        let hi = pairs.iter().map(|p| p.0).max();
        if let (Some(lo), Some(hi)) = (lo, hi)
            && (hi as i64 - lo as i64) as u64 >= MAX_SPAN as u64
        {
            return Err(serde::de::Error::custom(format!(
                "sketch buckets {lo}..={hi} span more than {MAX_SPAN} indices"
            )));
        }
        Ok(pairs.into_iter().collect())
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
            pos: Buckets::default(),
            neg: Buckets::default(),
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
        if v > 0.0 {
            self.pos.add(i, 1);
        } else {
            self.neg.add(i, 1);
        }
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
        self.pos.merge(&other.pos);
        self.neg.merge(&other.neg);
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
            .map(|(i, n)| (-map.value(i), n))
            .chain(std::iter::once((0.0, self.zero)))
            .chain(self.pos.iter().map(|(i, n)| (map.value(i), n)))
            .find(|&(_, n)| {
                seen += n;
                seen >= rank
            })
            .map(|(v, _)| v)?;
        Some(found.clamp(self.min?, self.max?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_without_a_call_is_floor_as_i32_everywhere() {
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            2.5,
            -2.5,
            -1e-300,
            1e-300,
            f64::MIN_POSITIVE,
            -f64::MIN_POSITIVE,
            i32::MAX as f64,
            i32::MAX as f64 + 0.5,
            i32::MAX as f64 + 1.0,
            i32::MIN as f64,
            i32::MIN as f64 - 0.5,
            i32::MIN as f64 + 0.5,
            i32::MIN as f64 - 1.0,
            3e9,
            -3e9,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ];
        // Values around every integer a mapping's indices reach, and a spread of others.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> 11) as f64 / (1u64 << 53) as f64 * 20_000.0 - 10_000.0;
            cases.extend([v, v.round(), v.round() - f64::EPSILON * v.abs(), v * 1e6]);
        }
        for v in cases {
            assert_eq!(floor_i32(v), v.floor() as i32, "{v:e}");
        }
    }

    #[test]
    fn buckets_grow_both_ways_and_merge_by_index() {
        let mut a = Buckets::default();
        for i in [5, 3, 9, 5, -2] {
            a.add(i, 1);
        }
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [(-2, 1), (3, 1), (5, 2), (9, 1)]
        );
        assert_eq!(
            (a.get(5), a.get(4), a.get(100), a.get(i32::MIN)),
            (2, 0, 0, 0)
        );
        let b: Buckets = [(-7, 2), (5, 1), (12, 4)].into_iter().collect();
        a.merge(&b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [(-7, 2), (-2, 1), (3, 1), (5, 3), (9, 1), (12, 4)]
        );
        assert_eq!(a.range(), Some((-7, 12)));
        // Zero counts neither show nor make two bucket sets differ.
        let with_zero: Buckets = [(1, 0), (4, 2)].into_iter().collect();
        let without: Buckets = [(4, 2)].into_iter().collect();
        assert_eq!(with_zero, without);
        let mut empty = Buckets::default();
        empty.merge(&with_zero);
        assert_eq!(empty, without);
    }

    #[test]
    fn buckets_serialize_as_pairs_and_refuse_a_huge_span() {
        let b: Buckets = [(3, 1), (-1, 2)].into_iter().collect();
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "[[-1,2],[3,1]]");
        assert_eq!(serde_json::from_str::<Buckets>(&json).unwrap(), b);
        let err = serde_json::from_str::<Buckets>("[[-2000000000,1],[2000000000,1]]").unwrap_err();
        assert!(err.to_string().contains("span more than"), "{err}");
    }
}
