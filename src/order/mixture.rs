//! The mixture: which dataset each stream position draws from.
//!
//! Deterministic mode solves Tijdeman's chairman assignment problem by earliest deadline first.
//! With `t` rows placed after this one and `c_d` the dataset's count (both counted from the
//! origin), the dataset's next sample may go no earlier than `w_d * t >= c_d` (else it would run
//! more than one ahead) and must go by `t = (c_d + 1) / w_d + 1` (else it would fall more than one
//! behind). Among the datasets whose next sample is due (`w_d * t - c_d >= 0`), the one with the
//! earliest deadline `(c_d + 1) / w_d` gets the row; ties go to the larger deficit
//! `w_d * t - c_d`, then to the first dataset. A schedule within one sample exists (Tijdeman
//! 1980), and earliest-deadline-first finds one whenever one exists, so every dataset's count
//! stays within one sample of `w_d * i` at every prefix i.
//!
//! The plain largest-deficit rule (`argmax_d w_d * t - c_d`) does not: with four or more datasets
//! it can fall more than one sample behind (a property test found `123` against `124.05`).
//!
//! `origin` is the position at which the current weights took effect: 0, or the resume position
//! after the weights changed, so new weights hold from that position on without a burst that
//! repays the past.
//!
//! Stochastic mode draws position i's dataset from the weights with a uniform number derived
//! from (seed, i) alone.

use super::shuffle::mix64;

/// How the mixture interleaves datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixtureMode {
    /// Earliest deadline first: exact to within one sample at every prefix.
    Deterministic,
    /// Each position drawn at random from the weights, seeded.
    Stochastic,
}

/// The mixture's running state: per-dataset consumed counts and the weights' origin.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MixState {
    pub counts: Vec<u64>,
    pub origin: u64,
    pub at_origin: Vec<u64>,
}

impl MixState {
    pub fn new(datasets: usize) -> Self {
        MixState {
            counts: vec![0; datasets],
            origin: 0,
            at_origin: vec![0; datasets],
        }
    }

    /// The dataset that stream position `p` draws from, and its consumed count before the draw;
    /// the count is advanced.
    #[inline]
    pub fn draw(&mut self, mode: MixtureMode, weights: &[f64], seed: u64, p: u64) -> (usize, u64) {
        let d = match mode {
            _ if weights.len() == 1 => 0,
            MixtureMode::Deterministic => {
                let t = (p + 1 - self.origin) as f64;
                let mut best = usize::MAX;
                let (mut best_deadline, mut best_deficit) = (f64::INFINITY, f64::NEG_INFINITY);
                for (d, &w) in weights.iter().enumerate() {
                    let c = (self.counts[d] - self.at_origin[d]) as f64;
                    let deficit = w * t - c;
                    if deficit < -1e-9 {
                        continue; // not due yet: taking it would run more than one ahead
                    }
                    let deadline = (c + 1.0) / w;
                    if deadline < best_deadline
                        || (deadline == best_deadline && deficit > best_deficit)
                    {
                        (best, best_deadline, best_deficit) = (d, deadline, deficit);
                    }
                }
                // The deficits sum to 1, so some dataset is always due; fall back to the largest
                // share against rounding.
                if best == usize::MAX { 0 } else { best }
            }
            MixtureMode::Stochastic => {
                let u = (mix64(seed ^ mix64(p ^ 0x6d69_7874)) >> 11) as f64 / (1u64 << 53) as f64;
                let mut acc = 0.0;
                weights
                    .iter()
                    .position(|&w| {
                        acc += w;
                        u < acc
                    })
                    .unwrap_or(weights.len() - 1)
            }
        };
        let c = self.counts[d];
        self.counts[d] += 1;
        (d, c)
    }
}
