//! Keyed permutations of `[0, n)`: O(1) memory, random access in both directions.
//!
//! A balanced Feistel network over the smallest even-bit domain `2^(2h) >= n`, with
//! cycle-walking (apply again until the value lands inside `[0, n)`), permutes `[0, n)` exactly.
//! Four rounds with a strong 64-bit mixer as the round function. The domain is below `4n`, so a
//! lookup takes under four walks on average.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::hash::mix64;

/// How a dataset's samples are ordered within an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shuffle {
    /// Samples in stored order, 0..N every epoch.
    None,
    /// A fresh permutation of all samples every epoch.
    Full,
    /// Shuffle the order of blocks of this many consecutive samples, then the samples inside
    /// each block: reads stay within a block at a time, for corpora larger than the page cache.
    Block(u64),
}

impl std::fmt::Display for Shuffle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shuffle::None => f.write_str("none"),
            Shuffle::Full => f.write_str("full"),
            Shuffle::Block(n) => write!(f, "block:{n}"),
        }
    }
}

/// A keyed bijection on `[0, n)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    keys: [u64; 4],
}

impl Permutation {
    /// The permutation of `[0, n)` keyed by `keys`.
    pub fn new(n: u64, keys: [u64; 4]) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        Permutation {
            n,
            half_bits: bits.div_ceil(2).max(1),
            keys,
        }
    }

    /// The permutation keyed by (seed, stream, epoch, salt), drawn from ChaCha.
    pub fn keyed(n: u64, seed: u64, stream: u64, epoch: u64, salt: u64) -> Self {
        let mut bytes = [0u8; 32];
        for (chunk, word) in bytes.chunks_exact_mut(8).zip([seed, stream, epoch, salt]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        let mut rng = ChaCha8Rng::from_seed(bytes);
        Self::new(n, std::array::from_fn(|_| rng.next_u64()))
    }

    /// The size of the permuted range.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The image of `x`, for `x < n`.
    pub fn apply(&self, x: u64) -> u64 {
        debug_assert!(x < self.n, "{x} is outside [0, {})", self.n);
        let mut y = x;
        loop {
            y = self.forward(y);
            if y < self.n {
                return y;
            }
        }
    }

    /// The preimage of `y`, for `y < n`: `invert(apply(x)) == x`.
    pub fn invert(&self, y: u64) -> u64 {
        debug_assert!(y < self.n, "{y} is outside [0, {})", self.n);
        let mut x = y;
        loop {
            x = self.backward(x);
            if x < self.n {
                return x;
            }
        }
    }

    fn mask(&self) -> u64 {
        (1u64 << self.half_bits) - 1
    }

    fn forward(&self, x: u64) -> u64 {
        let m = self.mask();
        let (mut l, mut r) = (x >> self.half_bits, x & m);
        for k in self.keys {
            (l, r) = (r, l ^ (mix64(r ^ k) & m));
        }
        (l << self.half_bits) | r
    }

    fn backward(&self, y: u64) -> u64 {
        let m = self.mask();
        let (mut l, mut r) = (y >> self.half_bits, y & m);
        for k in self.keys.iter().rev() {
            (l, r) = (r ^ (mix64(l ^ k) & m), l);
        }
        (l << self.half_bits) | r
    }
}

/// The order of one epoch of one dataset view: which view index stands at each offset.
#[derive(Clone, Debug)]
pub struct EpochOrder {
    n: u64,
    kind: EpochKind,
}

#[derive(Clone, Debug)]
enum EpochKind {
    Identity,
    Full(Permutation),
    Block {
        size: u64,
        blocks: Permutation,
        short_slot: u64,
        key: u64,
    },
}

impl EpochOrder {
    /// The order of `epoch` for a view of `n` samples, keyed by `seed` and `stream` (the dataset).
    pub fn new(shuffle: Shuffle, n: u64, seed: u64, stream: u64, epoch: u64) -> Self {
        let kind = match shuffle {
            Shuffle::None => EpochKind::Identity,
            Shuffle::Full => EpochKind::Full(Permutation::keyed(n, seed, stream, epoch, 0)),
            Shuffle::Block(size) => {
                let size = size.max(1);
                let count = n.div_ceil(size);
                let blocks = Permutation::keyed(count, seed, stream, epoch, 1);
                // Where the last (possibly short) block lands in the shuffled block order.
                let short_slot = if count == 0 {
                    0
                } else {
                    blocks.invert(count - 1)
                };
                let key = mix64(seed ^ mix64(stream ^ mix64(epoch ^ 0x5eed_b10c)));
                EpochKind::Block {
                    size,
                    blocks,
                    short_slot,
                    key,
                }
            }
        };
        EpochOrder { n, kind }
    }

    /// The view index at `offset` (< n) of the epoch.
    pub fn at(&self, offset: u64) -> u64 {
        match &self.kind {
            EpochKind::Identity => offset,
            EpochKind::Full(p) => p.apply(offset),
            EpochKind::Block {
                size,
                blocks,
                short_slot,
                key,
            } => {
                let (size, q) = (*size, *short_slot);
                let last_len = self.n - (blocks.len() - 1) * size;
                // Slots before q hold full blocks, slot q the short one, full blocks after it.
                let (slot, within) = if offset < q * size {
                    (offset / size, offset % size)
                } else if offset < q * size + last_len {
                    (q, offset - q * size)
                } else {
                    let rest = offset - q * size - last_len;
                    (q + 1 + rest / size, rest % size)
                };
                let block = blocks.apply(slot);
                let len = if block == blocks.len() - 1 {
                    last_len
                } else {
                    size
                };
                let inner = Permutation::new(
                    len,
                    std::array::from_fn(|r| mix64(key ^ block ^ ((r as u64) << 56))),
                );
                block * size + inner.apply(within)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_permutation(n: u64, f: impl Fn(u64) -> u64) {
        let mut seen = vec![false; n as usize];
        for x in 0..n {
            let y = f(x);
            assert!(
                y < n && !seen[y as usize],
                "{x} -> {y} repeats or leaves [0, {n})"
            );
            seen[y as usize] = true;
        }
    }

    #[test]
    fn feistel_permutes_every_size_and_inverts() {
        for n in 0..300 {
            let p = Permutation::keyed(n, 1, 2, 3, 0);
            is_permutation(n, |x| p.apply(x));
            for x in 0..n {
                assert_eq!(p.invert(p.apply(x)), x);
            }
        }
    }

    #[test]
    fn block_order_permutes_with_a_short_last_block() {
        for n in [1u64, 7, 64, 100, 101, 257] {
            for size in [1u64, 3, 8, 64, 1000] {
                let o = EpochOrder::new(Shuffle::Block(size), n, 9, 4, 2);
                is_permutation(n, |x| o.at(x));
                // Reads stay local: each run of `size` offsets (outside the short block) lies in
                // one block.
                let first_block = o.at(0) / size;
                if n % size == 0 || o.at(0) / size != (n - 1) / size {
                    assert!((0..size.min(n)).all(|x| o.at(x) / size == first_block));
                }
            }
        }
    }
}
