//! `shardflow bench`: loader throughput on real shards (or a generated corpus), beside a memcpy of
//! the same bytes on the same number of threads, measured in the same run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use shardflow::collate::{CollateConfig, Padding};
use shardflow::loader::{LoaderBuilder, LoaderStats, Source, measure};
use shardflow::order::{OrderConfig, Shuffle};
use shardflow::shard::synthetic::SyntheticCorpus;
use shardflow::transform::TransformConfig;
use shardflow::{Error, IndexedShard, Result};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Shard prefixes, one dataset each (weights equal). Without any, a generated corpus of
    /// `--tokens` tokens (log-normal lengths, median 300, u16 ids) is written to a temporary
    /// directory first.
    #[arg(long = "data")]
    data: Vec<PathBuf>,
    /// Tokens of the generated corpus.
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

/// What one bench run measured.
#[derive(Debug, serde::Serialize)]
struct Report {
    batches: u64,
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
    stats: LoaderStats,
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let tmp = tempfile::tempdir().map_err(|e| Error::io(&std::env::temp_dir(), "create", e))?;
    let prefixes = if a.data.is_empty() {
        eprintln!(
            "generating a {} token corpus in {}",
            a.tokens,
            tmp.path().display()
        );
        let parts: &[(&str, f64, f64)] = if a.mixture {
            &[
                ("web", 300.0, 0.5),
                ("code", 600.0, 0.3),
                ("chat", 150.0, 0.2),
            ]
        } else {
            &[("bench", 300.0, 1.0)]
        };
        let mut written = Vec::new();
        for (i, (name, median, share)) in parts.iter().enumerate() {
            let tokens = (a.tokens as f64 * share) as u64;
            let corpus = SyntheticCorpus::single(name, tokens, *median, a.seed + i as u64);
            written.extend(
                corpus
                    .write(tmp.path(), |_| {})?
                    .into_iter()
                    .map(|s| (s.prefix, *share)),
            );
        }
        written
    } else {
        a.data.iter().map(|p| (p.clone(), 1.0)).collect()
    };
    let sources = prefixes
        .iter()
        .map(|(p, weight)| Source::open(p, *weight))
        .collect::<Result<Vec<_>>>()?;
    let prefixes: Vec<PathBuf> = prefixes.into_iter().map(|(p, _)| p).collect();
    let padding = if a.pad_multiple <= 1 {
        Padding::Longest
    } else {
        Padding::Multiple(a.pad_multiple)
    };
    let mut loader = LoaderBuilder::<i32>::new(sources)
        .with_order(OrderConfig {
            seed: a.seed,
            shuffle: Shuffle::Full,
            local_batch: a.batch_size,
            ..Default::default()
        })
        .with_collate(CollateConfig {
            seq_len: a.seq_len,
            padding,
            pack: a.pack,
            attention_mask: false,
            labels: false,
            position_ids: false,
            ..Default::default()
        })
        .with_transform(TransformConfig {
            eos: a.eos,
            ..Default::default()
        })
        .with_workers(a.workers)
        .with_prefetch(2 * a.workers.max(1) + 2)
        .build_host()?;
    for b in loader.by_ref().take(20) {
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
    let stats = loader.stats();
    drop(loader);
    let real = (stats.real_tokens - warm.real_tokens) as f64;
    let padded = (stats.padded_tokens - warm.padded_tokens) as f64;
    let batches = stats.batches - warm.batches;

    // The roofline: copying the bytes the loader hands out (i32 ids, padding included) at the
    // memcpy bandwidth of as many threads as the loader has workers.
    let output_bytes = padded as u64 * 4;
    let bandwidth = memcpy_bandwidth(&prefixes, a.workers.max(1))?;
    let report = Report {
        batches,
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
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        );
    } else {
        println!(
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
        );
    }
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
