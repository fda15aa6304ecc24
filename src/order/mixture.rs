//! The mixture: which dataset each stream position draws from.
//!
//! Weights are quantized to multiples of `1 / Q` with `Q = 2^20` ([`RESOLUTION`]): integer
//! shares `k_d` that sum to `Q`, rounded by largest remainder, so each normalized weight moves by
//! less than `2^-20` (about 1e-6). Every rule below is exact integer arithmetic on the shares.
//!
//! Deterministic mode solves Tijdeman's chairman assignment problem by earliest deadline first.
//! With `t` the 1-based count of rows since the origin (this one included) and `c_d` the
//! dataset's count since the origin, dataset d is due when `k_d * t - Q * c_d >= 0` (taking it
//! keeps it within one sample of its share). Among the due datasets, the one with the earliest
//! deadline `(c_d + 1) / k_d` gets the row; ties go to the larger deficit `k_d * t - Q * c_d`,
//! then to the first dataset. A schedule within one sample exists (Tijdeman 1980) and earliest
//! deadline first finds one, so every dataset's count stays within one sample of `k_d * i / Q`
//! at every prefix i. Against the unquantized weights `w_d` the bound is `1 + i * 2^-20`.
//!
//! The plain largest-deficit rule (`argmax_d w_d * t - c_d`) does not keep that bound: with four
//! or more datasets it can fall more than one sample behind (a property test found `123` against
//! `124.05`).
//!
//! The schedule is periodic: after `Q` rows every count is exactly `k_d` above where it started,
//! every deficit is back to zero, and the rule depends only on those deficits and deadline
//! differences, so the next `Q` rows repeat the first. The counts at any position are therefore
//! `periods * k_d` plus the counts of at most `Q - 1` replayed rows: a jump answers
//! in `O(Q * datasets)` however far the position, where replaying from the start would take
//! `O(position)`.
//!
//! `origin` is the position at which the current weights took effect: 0, or the resume position
//! after the weights changed, so new weights hold from that position on without a burst that
//! repays the past.
//!
//! Stochastic mode is random but stratified: the rows since the origin fall in blocks of `Q`,
//! and each block is a seeded random permutation (a Feistel network over exactly `2^20` slots,
//! keyed by the seed, the origin and the block) of a multiset holding `k_d` rows of each dataset.
//! Rows are drawn without replacement within a block: the interleave is random, every block gives
//! each dataset exactly its share, and the counts at any position are again whole blocks plus at
//! most `Q - 1` replayed rows.

use super::shuffle::Permutation;
use crate::error::{Error, Result};

/// The resolution of mixture weights: shares are multiples of `1 / RESOLUTION`.
pub const RESOLUTION: u64 = 1 << 20;

/// How the mixture interleaves datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MixtureMode {
    /// Earliest deadline first: exact to within one sample at every prefix.
    Deterministic,
    /// Seeded random order, drawn without replacement from blocks of 2^20 rows that hold each
    /// dataset's exact share.
    Stochastic,
}

/// Integer shares `k_d` summing to [`RESOLUTION`], by largest remainder; ties go to the first
/// dataset. Weights must be finite and positive (checked by the caller).
///
/// # Errors
///
/// [`Error::WeightBelowResolution`] for a weight whose share rounds to zero (below about
/// `2^-21` of the total): the mixture cannot represent it.
pub(crate) fn quantize(names: &[String], weights: &[f64]) -> Result<Vec<u64>> {
    // Scale by the largest first, so that huge weights cannot overflow their sum.
    let max = weights.iter().copied().fold(0.0f64, f64::max);
    let scaled: Vec<f64> = weights.iter().map(|w| w / max).collect();
    let total: f64 = scaled.iter().sum();
    let exact: Vec<f64> = scaled
        .iter()
        .map(|w| w / total * RESOLUTION as f64)
        .collect();
    let mut shares: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let given: u64 = shares.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &d in order.iter().take(RESOLUTION.saturating_sub(given) as usize) {
        shares[d] += 1;
    }
    if let Some(d) = shares.iter().position(|&k| k == 0) {
        return Err(Error::WeightBelowResolution {
            dataset: names[d].clone(),
            weight: weights[d],
            share: scaled[d] / total,
        });
    }
    debug_assert_eq!(shares.iter().sum::<u64>(), RESOLUTION);
    Ok(shares)
}

/// The mixture's running state: per-dataset consumed counts and the weights' origin.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MixState {
    pub counts: Vec<u64>,
    pub origin: u64,
    pub at_origin: Vec<u64>,
    /// The stochastic mode's permutation of the current block.
    block: Option<(u64, Permutation)>,
}

impl MixState {
    pub fn new(datasets: usize) -> Self {
        MixState {
            counts: vec![0; datasets],
            origin: 0,
            at_origin: vec![0; datasets],
            block: None,
        }
    }

    /// The dataset that stream position `p` draws from, and its consumed count before the draw;
    /// the count is advanced. The state must be the one at `p` (counts since the origin adding
    /// up to `p - origin`, which checked cursors guarantee).
    #[inline]
    pub fn draw(&mut self, mode: MixtureMode, shares: &[u64], seed: u64, p: u64) -> (usize, u64) {
        let d = match mode {
            _ if shares.len() == 1 => 0,
            MixtureMode::Deterministic => self.earliest_deadline(shares, p),
            MixtureMode::Stochastic => self.stratified(shares, seed, p),
        };
        let c = self.counts[d];
        self.counts[d] += 1;
        (d, c)
    }

    /// The deterministic rule, in exact integer arithmetic (see the module docs). The rule is
    /// the same one period later, so it runs on the position within the current period and the
    /// counts less the whole periods' shares: small numbers, exact in i64.
    #[inline]
    fn earliest_deadline(&self, shares: &[u64], p: u64) -> usize {
        let rel = p.saturating_sub(self.origin);
        let periods = rel / RESOLUTION;
        let t = (rel % RESOLUTION) as i64 + 1;
        let q = RESOLUTION as i64;
        // (dataset, c + 1, share, deficit) of the best so far.
        let mut best: Option<(usize, i64, i64, i64)> = None;
        for (d, &k) in shares.iter().enumerate() {
            // Within one of k * t / Q for a state the cursor checks allow; wrapping keeps a
            // corrupt one from panicking.
            let c = (self.counts[d].wrapping_sub(self.at_origin[d]))
                .wrapping_sub(periods.wrapping_mul(k)) as i64;
            let k = k as i64;
            let deficit = (k * t).wrapping_sub(q.wrapping_mul(c));
            if deficit < 0 {
                continue; // not due yet: taking it would run more than one ahead
            }
            let better = match best {
                None => true,
                Some((_, bc1, bk, bdef)) => {
                    let (mine, theirs) = (c.wrapping_add(1).wrapping_mul(bk), bc1.wrapping_mul(k));
                    mine < theirs || (mine == theirs && deficit > bdef)
                }
            };
            if better {
                best = Some((d, c.wrapping_add(1), k, deficit));
            }
        }
        // The deficits sum to Q > 0 when the counts add up, so some dataset is due.
        best.map_or(0, |b| b.0)
    }

    /// The stochastic rule: slot `rel % Q` of block `rel / Q`'s permutation of the multiset.
    #[inline]
    fn stratified(&mut self, shares: &[u64], seed: u64, p: u64) -> usize {
        let rel = p.saturating_sub(self.origin);
        let (block, slot) = (rel / RESOLUTION, rel % RESOLUTION);
        let perm = match &self.block {
            Some((b, perm)) if *b == block => perm,
            _ => {
                let perm = Permutation::keyed(RESOLUTION, seed, self.origin, block, 0x6d69_7874);
                &self.block.insert((block, perm)).1
            }
        };
        let mut x = perm.apply(slot);
        for (d, &k) in shares.iter().enumerate() {
            if x < k {
                return d;
            }
            x -= k;
        }
        shares.len() - 1
    }

    /// Moves the state to stream position `to` (at or after the current position `from`):
    /// row by row when that is shorter, else by [`MixState::jump`].
    pub fn advance(&mut self, mode: MixtureMode, shares: &[u64], seed: u64, from: u64, to: u64) {
        let rel = to - self.origin;
        if to - from > rel % RESOLUTION {
            self.jump(mode, shares, seed, to);
            return;
        }
        for p in from..to {
            self.draw(mode, shares, seed, p);
        }
    }

    /// Sets the state at position `to` from the origin: every whole period of `Q` rows adds
    /// exactly `k_d` to each count (in both modes), and the rest of the last period is replayed.
    pub fn jump(&mut self, mode: MixtureMode, shares: &[u64], seed: u64, to: u64) {
        let rel = to - self.origin;
        let periods = rel / RESOLUTION;
        let start = self.origin + periods * RESOLUTION;
        let mut part = MixState::new(shares.len());
        // The deterministic rule repeats every period, so the last one replays from a state
        // whose origin is its start; the stochastic one keys its blocks by the true origin.
        part.origin = match mode {
            MixtureMode::Deterministic => start,
            MixtureMode::Stochastic => self.origin,
        };
        for p in start..to {
            part.draw(mode, shares, seed, p);
        }
        for (d, &k) in shares.iter().enumerate() {
            self.counts[d] = self.at_origin[d] + periods * k + part.counts[d];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    #[test]
    fn shares_sum_to_the_resolution_and_round_by_largest_remainder() {
        let k = quantize(&names(3), &[1.0, 1.0, 1.0]).unwrap();
        assert_eq!(k.iter().sum::<u64>(), RESOLUTION);
        assert_eq!(k, [349_526, 349_525, 349_525]);
        let k = quantize(&names(2), &[3.0, 1.0]).unwrap();
        assert_eq!(k, [786_432, 262_144]);
        let huge = quantize(&names(2), &[1e308, 1e308]).unwrap();
        assert_eq!(huge, [RESOLUTION / 2, RESOLUTION / 2]);
        let e = quantize(&names(2), &[1.0, 1e-9]).unwrap_err();
        assert!(e.to_string().contains("d1"), "{e}");
    }

    #[test]
    fn the_schedule_repeats_every_period_and_jumps_equal_replays() {
        let shares = quantize(&names(3), &[0.5, 0.3, 0.2]).unwrap();
        let mut walk = MixState::new(3);
        let mut first = Vec::new();
        for p in 0..RESOLUTION + 500 {
            let (d, _) = walk.draw(MixtureMode::Deterministic, &shares, 0, p);
            if p < 500 {
                first.push(d);
            } else if p >= RESOLUTION {
                assert_eq!(d, first[(p - RESOLUTION) as usize], "position {p}");
            }
            if p == RESOLUTION - 1 {
                assert_eq!(walk.counts, shares, "a period gives each dataset its share");
            }
        }
        for mode in [MixtureMode::Deterministic, MixtureMode::Stochastic] {
            for to in [0, 77, RESOLUTION, RESOLUTION + 499] {
                let mut jumped = MixState::new(3);
                jumped.origin = 5;
                jumped.jump(mode, &shares, 9, to + 5);
                let mut replayed = MixState::new(3);
                replayed.origin = 5;
                for p in 5..to + 5 {
                    replayed.draw(mode, &shares, 9, p);
                }
                assert_eq!(jumped.counts, replayed.counts, "{mode:?} at {to}");
            }
        }
    }
}
