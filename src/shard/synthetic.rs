//! The built-in synthetic corpus: deterministic, generated from a seed, written as Megatron
//! shards. `shardflow demo`, the tests and the benchmarks run on it, so no data set has to be
//! fetched.
//!
//! Document lengths are log-normal (a median and a spread, like real web text); token ids are
//! Zipf-like (id k drawn with probability about 1/k), like a real tokenizer's output. Documents
//! longer than `max_sequence` are cut into several sequences of one document.

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use super::dtype::Dtype;
use super::writer::{IndexedWriter, ShardSummary};
use crate::error::Result;

/// One synthetic dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticSpec {
    /// Dataset name; the shard is written at `DIR/NAME`.
    pub name: String,
    /// Number of documents.
    pub documents: usize,
    /// Median document length in tokens.
    pub median_len: f64,
    /// Standard deviation of the log length.
    pub sigma: f64,
    /// Vocabulary size: ids lie in `0..vocab`.
    pub vocab: u32,
    /// Longest sequence; longer documents span several sequences.
    pub max_sequence: usize,
}

/// A deterministic corpus of several datasets.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticCorpus {
    /// The seed every draw derives from.
    pub seed: u64,
    /// The datasets, each with its own random stream.
    pub datasets: Vec<SyntheticSpec>,
}

impl SyntheticCorpus {
    /// The demo corpus: `web` (short documents), `code` (medium) and `books` (long, cut into
    /// several sequences), about 4.7 M tokens in all, GPT-2-sized vocabulary, u16 ids.
    pub fn demo() -> Self {
        let spec = |name: &str, documents, median_len, sigma| SyntheticSpec {
            name: name.into(),
            documents,
            median_len,
            sigma,
            vocab: 50_257,
            max_sequence: 2048,
        };
        SyntheticCorpus {
            seed: 2026,
            datasets: vec![
                spec("web", 6_000, 300.0, 0.8),
                spec("code", 1_500, 600.0, 0.9),
                spec("books", 250, 3_000.0, 0.6),
            ],
        }
    }

    /// One dataset named `name` of about `tokens` tokens with log-normal lengths of median
    /// `median_len`, as the loader benchmarks use.
    pub fn single(name: &str, tokens: u64, median_len: f64, seed: u64) -> Self {
        let sigma: f64 = 0.7;
        // The mean of a log-normal is median * exp(sigma^2 / 2).
        let mean = median_len * (sigma * sigma / 2.0).exp();
        SyntheticCorpus {
            seed,
            datasets: vec![SyntheticSpec {
                name: name.into(),
                documents: (tokens as f64 / mean).ceil().max(1.0) as usize,
                median_len,
                sigma,
                vocab: 50_257,
                max_sequence: usize::MAX,
            }],
        }
    }

    /// Writes every dataset as a u16 Megatron shard at `dir/NAME`, reporting tokens written so
    /// far to `progress` after each document. Returns one summary per dataset.
    ///
    /// # Errors
    ///
    /// The writer's errors.
    pub fn write(&self, dir: &Path, mut progress: impl FnMut(u64)) -> Result<Vec<ShardSummary>> {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(self.datasets.len());
        let mut doc = Vec::new();
        for (k, spec) in self.datasets.iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream(k as u64);
            let dtype = if spec.vocab <= 1 << 16 {
                Dtype::U16
            } else {
                Dtype::I32
            };
            let mut w = IndexedWriter::create(self.prefix(dir, spec), Some(dtype))?;
            let ln_vocab = (spec.vocab as f64).ln();
            let cap = (spec.median_len * 16.0).max(1.0);
            for _ in 0..spec.documents {
                let len = (spec.median_len.ln() + spec.sigma * normal(&mut rng)).exp();
                let len = len.clamp(1.0, cap) as usize;
                doc.clear();
                doc.extend((0..len).map(|_| {
                    let k = (unit(&mut rng) * ln_vocab).exp() as u32;
                    k.clamp(1, spec.vocab) - 1
                }));
                for seq in doc.chunks(spec.max_sequence.max(1)) {
                    w.add_sequence(seq)?;
                }
                w.end_document()?;
                total += len as u64;
                progress(total);
            }
            out.push(w.finish()?);
        }
        Ok(out)
    }

    /// Where dataset `spec` is written under `dir`.
    pub fn prefix(&self, dir: &Path, spec: &SyntheticSpec) -> PathBuf {
        dir.join(&spec.name)
    }

    /// Expected total tokens, for sizing a progress bar.
    pub fn expected_tokens(&self) -> u64 {
        let mean = |s: &SyntheticSpec| s.median_len * (s.sigma * s.sigma / 2.0).exp();
        self.datasets
            .iter()
            .map(|s| s.documents as f64 * mean(s))
            .sum::<f64>() as u64
    }
}

/// A uniform draw in (0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let (u, v) = (unit(rng), unit(rng));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}
