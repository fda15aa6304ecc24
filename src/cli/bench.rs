//! `shardflow bench`: loader throughput on real shards (or a generated corpus), beside a memcpy of
//! the same bytes on the same number of threads, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::{Out, data, measure, note, outln};
use crate::atomic::TempDir;
use crate::collate::{CollateConfig, Padding};
use crate::loader::{Loader, LoaderBuilder, LoaderStats, Source};
use crate::order::{OrderConfig, Shuffle};
use crate::shard::resolve_prefix;
use crate::shard::synthetic::SyntheticCorpus;
use crate::transform::TransformConfig;
use crate::{Error, IndexedShard, Result};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A dataset: `[NAME=]PATH[:WEIGHT]`, where PATH is a shard prefix or a directory of shards
    /// (weights default to 1). Without any, a generated corpus of `--tokens` tokens (log-normal
    /// lengths, median 300, u16 ids) is written to a temporary directory first.
    #[arg(long = "data")]
    data: Vec<String>,
    /// Tokens of the generated corpus (at most 10^10; the disk must hold 2 bytes per token).
    #[arg(long, default_value_t = 50_000_000)]
    tokens: u64,
    /// Generate three datasets (medians 300, 600 and 150 tokens) and mix them 0.5 / 0.3 / 0.2
    /// instead of one dataset.
    #[arg(long)]
    mixture: bool,
    /// Append this end-of-sequence id to every sample (a per-sample transform).
    #[arg(long)]
    eos: Option<i64>,
    /// Rows per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Pad each batch to a multiple of this (1: to the longest row).
    #[arg(long, default_value_t = 8)]
    pad_multiple: usize,
    /// The longest row.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// Pack documents into full rows instead of padding.
    #[arg(long)]
    pack: bool,
    /// Loader worker threads (0: on the caller's thread).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Batches to time (after 20 warm-up batches).
    #[arg(long, default_value_t = 2000)]
    batches: usize,
    /// The seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The most tokens `bench` generates.
pub const MAX_TOKENS: u64 = 10_000_000_000;
/// Batches run before timing starts.
const WARMUP: usize = 20;

/// What one bench run measured; every count covers the timed batches only.
#[derive(Debug, serde::Serialize)]
struct Report {
    batches: u64,
    warmup_batches: u64,
    workers: usize,
    seconds: f64,
    real_tokens_per_s: f64,
    padded_tokens_per_s: f64,
    batches_per_s: f64,
    padding_ratio: f64,
    cpu_ns_per_real_token: f64,
    output_bytes: u64,
    memcpy_gb_per_s: f64,
    roofline_ratio: f64,
    /// The loader's counters over the timed batches (the warm-up subtracted).
    stats: LoaderStats,
}

impl BenchArgs {
    /// The loader these arguments describe, over `sources`.
    ///
    /// # Errors
    ///
    /// The builder's configuration errors ([`LoaderBuilder::build`]).
    pub fn loader(&self, sources: Vec<Source>) -> Result<Loader<i32>> {
        let padding = if self.pad_multiple <= 1 {
            Padding::Longest
        } else {
            Padding::Multiple(self.pad_multiple)
        };
        LoaderBuilder::<i32>::new(sources)
            .with_order(OrderConfig {
                seed: self.seed,
                shuffle: Shuffle::Full,
                local_batch: self.batch_size,
                ..Default::default()
            })
            .with_collate(CollateConfig {
                seq_len: self.seq_len,
                padding,
                pack: self.pack,
                attention_mask: false,
                labels: false,
                position_ids: false,
                ..Default::default()
            })
            .with_transform(TransformConfig {
                eos: self.eos,
                ..Default::default()
            })
            .with_workers(self.workers)
            .with_prefetch(2 * self.workers.max(1) + 2)
            .build_host()
    }

    /// Writes the generated corpus into `dir`: `(prefix, weight)` per dataset.
    fn generate(&self, dir: &Path) -> Result<Vec<(PathBuf, f64)>> {
        if self.tokens > MAX_TOKENS {
            return Err(Error::Config(format!(
                "--tokens {}: at most {MAX_TOKENS} tokens are generated; give --data for a \
                 larger corpus",
                self.tokens
            )));
        }
        let needed = self.tokens.saturating_mul(2) + (self.tokens / 20) + (64 << 20);
        if let Some(free) = measure::free_bytes(dir).filter(|&free| free < needed) {
            return Err(Error::Config(format!(
                "--tokens {}: the generated corpus needs about {} MB in {}, which has {} MB free",
                self.tokens,
                needed >> 20,
                dir.display(),
                free >> 20
            )));
        }
        note(format_args!(
            "generating a {} token corpus in {}",
            self.tokens,
            dir.display()
        ));
        let parts: &[(&str, f64, f64)] = if self.mixture {
            &[
                ("web", 300.0, 0.5),
                ("code", 600.0, 0.3),
                ("chat", 150.0, 0.2),
            ]
        } else {
            &[("bench", 300.0, 1.0)]
        };
        let bar = super::progress_bar(
            Some(self.tokens),
            "{spinner} generating [{bar:30}] {pos}/{len} tokens ({per_sec}, {elapsed})",
        );
        let mut written = Vec::new();
        let mut done = 0;
        for (i, (name, median, share)) in parts.iter().enumerate() {
            let tokens = (self.tokens as f64 * share) as u64;
            let corpus = SyntheticCorpus::single(name, tokens, *median, self.seed + i as u64);
            let shards = corpus.write(dir, |t| bar.set_position(done + t))?;
            done += tokens;
            written.extend(shards.into_iter().map(|s| (s.prefix, *share)));
        }
        bar.finish_and_clear();
        Ok(written)
    }
}

impl BenchArgs {
    /// Caps what only costs time and memory (threads, batch size), for the fuzz target.
    pub(super) fn cap_for_fuzzing(&mut self) {
        self.workers = self.workers.min(2);
        self.batch_size = self.batch_size.min(64);
        self.seq_len = self.seq_len.min(1024);
    }
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let tmp = TempDir::new()?;
    let sources = if a.data.is_empty() {
        a.generate(tmp.path())?
            .iter()
            .map(|(p, weight)| Source::open(p, *weight))
            .collect::<Result<Vec<_>>>()?
    } else {
        let args = data::parse_all(&a.data, false)?;
        let sources: Vec<Source> = args
            .iter()
            .map(|d| {
                let data = d.dataset().expect("bench takes no sizes").clone();
                Source::new(d.name(), data, d.weight())
            })
            .collect();
        sources
    };
    let prefixes: Vec<PathBuf> = sources
        .iter()
        .flat_map(|s| s.data.shards().iter().map(|sh| resolve_prefix(sh.path())))
        .collect();
    let mut loader = a.loader(sources)?;
    for b in loader.by_ref().take(WARMUP) {
        b?;
    }
    let warm = loader.stats();
    let cpu0 = measure::cpu_time();
    let t0 = Instant::now();
    for b in loader.by_ref().take(a.batches) {
        b?;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = measure::cpu_time().saturating_sub(cpu0);
    let stats = loader.stats().since(&warm);
    drop(loader);
    let real = stats.real_tokens as f64;
    let padded = stats.padded_tokens as f64;
    let batches = stats.batches;

    // The roofline: copying the bytes the loader hands out (i32 ids, padding included) at the
    // memcpy bandwidth of as many threads as the loader has workers.
    let output_bytes = padded as u64 * 4;
    let bandwidth = memcpy_bandwidth(&prefixes, a.workers.max(1))?;
    let report = Report {
        batches,
        warmup_batches: warm.batches,
        workers: a.workers,
        seconds,
        real_tokens_per_s: real / seconds,
        padded_tokens_per_s: padded / seconds,
        batches_per_s: batches as f64 / seconds,
        padding_ratio: if padded > 0.0 {
            (padded - real) / padded
        } else {
            0.0
        },
        cpu_ns_per_real_token: cpu.as_nanos() as f64 / real,
        output_bytes,
        memcpy_gb_per_s: bandwidth / 1e9,
        roofline_ratio: output_bytes as f64 / bandwidth / seconds,
        stats,
    };
    let mut out = Out::new();
    if a.json {
        let text = serde_json::to_string_pretty(&report).expect("reports serialize");
        outln!(out, "{text}")?;
    } else {
        outln!(
            out,
            "{batches} batches of {} rows in {seconds:.2} s with {} workers\n\
             real tokens/s     {:>10.1} M\n\
             padded tokens/s   {:>10.1} M\n\
             batches/s         {:>10.0}\n\
             padding ratio     {:>10.3}\n\
             CPU ns/real token {:>10.2}\n\
             memcpy            {:>10.1} GB/s ({} threads)\n\
             roofline ratio    {:>10.2} (memcpy time of the {} output bytes / loader time)",
            a.batch_size,
            a.workers,
            report.real_tokens_per_s / 1e6,
            report.padded_tokens_per_s / 1e6,
            report.batches_per_s,
            report.padding_ratio,
            report.cpu_ns_per_real_token,
            report.memcpy_gb_per_s,
            a.workers.max(1),
            report.roofline_ratio,
            report.output_bytes,
        )?;
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// Memcpy bandwidth over the shards' stored bytes (larger than any cache).
fn memcpy_bandwidth(prefixes: &[PathBuf], threads: usize) -> Result<f64> {
    let shards = prefixes
        .iter()
        .map(IndexedShard::open)
        .collect::<Result<Vec<_>>>()?;
    let src: Vec<&[u8]> = shards.iter().map(|s| s.bin_bytes()).collect();
    Ok(measure::memcpy_bandwidth(&src, threads, 5))
}
