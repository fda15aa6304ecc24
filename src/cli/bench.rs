//! `shardflow bench`: loader throughput on real shards (or a generated corpus), beside a memcpy of
//! the same bytes on the same number of threads, measured in the same run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

use super::{Out, data, measure, note, outln};
use crate::atomic::TempDir;
use crate::collate::{CollateConfig, Padding};
use crate::device::{DeviceBatch, DeviceSink};
use crate::loader::{
    Loader, LoaderBuilder, LoaderConfig, LoaderStats, MAX_BATCH_TOKENS, MAX_READ_AHEAD,
    RuntimeConfig, Source,
};
use crate::order::{OrderConfig, Shuffle};
use crate::shard::synthetic::SyntheticCorpus;
use crate::transform::TransformConfig;
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A dataset: `[NAME=]PATH[:WEIGHT]`, where PATH is a shard prefix or a directory of shards
    /// (weights default to 1). Without any, a generated corpus of `--tokens` tokens (log-normal
    /// lengths, median 300, u16 ids) is written to a temporary directory first.
    #[arg(long = "data")]
    data: Vec<String>,
    /// Tokens of the generated corpus (1 to 10^10, rounded up to whole documents; the disk must
    /// hold 2 bytes per token).
    #[arg(long, default_value_t = 50_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: u64,
    /// Write the generated corpus to this directory and keep it (a later run reads it with
    /// `--data DIR`, or `--data web=DIR/web ...` for a mixture) instead of a temporary one.
    #[arg(long, conflicts_with = "data")]
    keep: Option<PathBuf>,
    /// Generate three datasets (medians 300, 600 and 150 tokens) and mix them 0.5 / 0.3 / 0.2
    /// instead of one dataset (not with `--data`: give its datasets and weights there).
    #[arg(long, conflicts_with = "data")]
    mixture: bool,
    /// Append this end-of-sequence id to every sample (a per-sample transform; 0 to 2^31 - 1,
    /// the ids are i32).
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..=i64::from(i32::MAX)))]
    eos: Option<i64>,
    /// Rows per batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Pad each batch to a multiple of this (1: to the longest row); `--seq-len` must be a
    /// multiple of it, so that no row is padded past `--seq-len`.
    #[arg(long, default_value_t = 8, value_parser = ranged::<usize>(1, MAX_BATCH_TOKENS))]
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
    /// Batches to time per round (after a warm-up round of as many); at least 1.
    #[arg(long, default_value_t = 2000, value_parser = ranged::<usize>(1, u64::MAX))]
    batches: usize,
    /// Rounds of `--batches` batches; the figures are the median round's. At least 1.
    #[arg(long, default_value_t = 5, value_parser = ranged::<usize>(1, u64::MAX))]
    rounds: usize,
    /// The seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where batches go: `host` (padded on the host), `wgpu` (ragged ids to the first wgpu
    /// adapter, padded there), `cuda` (ragged ids from pinned memory to CUDA device 0, padded
    /// there) or `null` (the device sinks' host-side staging, then the batch is dropped: the CPU
    /// cost of feeding a GPU, measured without one); for a device the host sink runs first on
    /// the same batches for comparison.
    #[arg(long, value_enum, default_value_t = Device::Host)]
    device: Device,
    /// After the run, drop the shards from the page cache before each of four more runs (full
    /// shuffle and block shuffle, each without and with plan-driven prefetch) and report their
    /// rates and major page faults: the cold-cache read path.
    #[arg(long)]
    cold: bool,
    /// Steps of plan-driven prefetch (`MADV_WILLNEED` on the samples of the batch this many
    /// steps ahead; 0: off; at most 4096) in the main run; `--cold` compares 0 with
    /// `--read-ahead` (16 if 0).
    #[arg(long, default_value_t = 0, value_parser = ranged::<usize>(0, MAX_READ_AHEAD as u64))]
    read_ahead: usize,
    /// MiB of each of the two buffers the memcpy roofline copies between (1 to 65536). The copy
    /// measures memory bandwidth only when they are well above the cache the copying cores
    /// share; the default suits a small machine.
    #[arg(long, default_value_t = 256, value_parser = ranged::<usize>(1, 1 << 16))]
    roofline_mib: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// The `--device` of `bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// Host memory.
    Host,
    /// A wgpu adapter.
    Wgpu,
    /// CUDA device 0 (feature `cuda`).
    Cuda,
    /// No device: the ragged staging of the device sinks, then the batch is dropped.
    Null,
}

/// The most tokens `bench` generates.
pub const MAX_TOKENS: u64 = 10_000_000_000;

/// Batches run before timing starts, at least: the warm-up is one round (`--batches`), so that
/// the first touch of every mapped page (a minor fault each) is not timed.
const WARMUP: usize = 20;

/// A value parser for a `T` in `min..=max` (a usage error, status 2, names the range).
fn ranged<T>(min: u64, max: u64) -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::error::Error + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::new().range(min..=max)
}

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
    /// The memcpy bandwidth (GB/s) of the roofline: the median of its copies.
    memcpy_gb_per_s: f64,
    /// The roofline: the time a copy of `output_bytes` takes at `memcpy_gb_per_s`, over the
    /// loader's time (1.0: the loader hands out bytes as fast as memcpy copies them).
    roofline_ratio: f64,
    /// The roofline measurement itself: best, median and worst of its copies (bytes/s), its
    /// spread, the buffer size and threads.
    memcpy: measure::Bandwidth,
    /// Rounds timed, each of `batches` batches; the figures above are the median round's.
    rounds: usize,
    /// Real tokens per second of every round.
    round_rates: Vec<f64>,
    /// `(fastest - slowest) / fastest` over the rounds.
    round_spread: f64,
    /// The loader's counters over the timed batches (the warm-up subtracted).
    stats: LoaderStats,
    /// With `--cold`: runs from a dropped page cache.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cold: Vec<ColdRun>,
    /// The device sink's figures, with `--device wgpu`, `cuda` or `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceReport>,
}

/// One `--cold` run: the shards dropped from the page cache first.
#[derive(Debug, serde::Serialize)]
struct ColdRun {
    /// `full` or `block:N`.
    shuffle: String,
    /// Steps of plan-driven prefetch (0: off).
    read_ahead: usize,
    /// Batches timed (no warm-up: the cold start is what is measured).
    batches: u64,
    real_tokens_per_s: f64,
    /// Major page faults (reads from disk) of this process during the run.
    major_faults: u64,
    /// Rate over the warm run's.
    over_warm: f64,
}

/// What `--device wgpu`, `cuda` or `null` measured beside the host figures.
#[derive(Debug, serde::Serialize)]
struct DeviceReport {
    /// The device sink's device.
    adapter: String,
    /// Batches per second through the device sink, each waited for on the device.
    batches_per_s: f64,
    /// Process CPU time (getrusage) per real token through the device sink.
    cpu_ns_per_real_token: f64,
    /// The host sink's CPU time per real token on the same batches, measured first.
    host_cpu_ns_per_real_token: f64,
    /// The host sink's batches per second on the same batches, measured first.
    host_batches_per_s: f64,
    /// Bytes written to the device per batch: ragged ids and index arrays.
    bytes_per_batch: f64,
    /// Bytes a host-padded upload would write per batch: every requested [B, T] field.
    padded_bytes_per_batch: f64,
    /// `padded_bytes_per_batch / bytes_per_batch`.
    padded_over_ragged: f64,
    /// Device buffers created (recycled slots: the first two batches).
    buffers_created: u64,
    /// CUDA: a pinned host-to-device copy's bandwidth, measured in the same run on the same
    /// number of bytes per copy as a batch sends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_h2d_gb_per_s: Option<f64>,
    /// CUDA: the time those copies alone take for the batches' bytes over the sink's time (1.0
    /// means the sink runs at the bus's speed).
    #[serde(skip_serializing_if = "Option::is_none")]
    bus_ratio: Option<f64>,
}

#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
impl DeviceReport {
    /// The report of a device sink's `run` against the `host` run, from the sink's counters.
    fn new(adapter: String, run: &Timed, host: &Timed, s: &crate::device::SinkStats) -> Self {
        let n = s.uploads.max(1) as f64;
        DeviceReport {
            adapter,
            batches_per_s: run.stats.batches as f64 / run.seconds,
            cpu_ns_per_real_token: run.cpu_ns_per_real_token(),
            host_cpu_ns_per_real_token: host.cpu_ns_per_real_token(),
            host_batches_per_s: host.stats.batches as f64 / host.seconds,
            bytes_per_batch: s.bytes_uploaded as f64 / n,
            padded_bytes_per_batch: s.padded_bytes as f64 / n,
            padded_over_ragged: s.padded_bytes as f64 / s.bytes_uploaded.max(1) as f64,
            buffers_created: s.buffers_created,
            pinned_h2d_gb_per_s: None,
            bus_ratio: None,
        }
    }
}

/// One timed run: the loader's counters over the timed batches, wall and CPU time, of the median
/// round; and every round's rate.
struct Timed {
    stats: LoaderStats,
    warmup: u64,
    seconds: f64,
    cpu: std::time::Duration,
    /// Real tokens per second of each round, in order.
    rates: Vec<f64>,
}

impl Timed {
    /// Process CPU time per real token over the median round.
    fn cpu_ns_per_real_token(&self) -> f64 {
        self.cpu.as_nanos() as f64 / (self.stats.real_tokens as f64).max(1.0)
    }
}

/// Runs a warm-up round (`WARMUP` batches at least), then `rounds` rounds of `batches` batches each, waiting for
/// each batch on its device; the figures are the round of median rate (a round on a machine shared with
/// other work can be slowed by it; the median is what the loader sustains).
fn timed<S: DeviceSink<i32>>(
    loader: &mut Loader<i32, S>,
    batches: usize,
    rounds: usize,
) -> Result<Timed>
where
    S::Output: DeviceBatch<i32>,
{
    for b in loader.by_ref().take(WARMUP.max(batches)) {
        b?.wait()?;
    }
    let warmup = loader.stats().batches;
    let mut runs = Vec::new();
    for _ in 0..rounds.max(1) {
        let before = loader.stats();
        let cpu0 = measure::cpu_time();
        let t0 = Instant::now();
        for b in loader.by_ref().take(batches) {
            b?.wait()?;
        }
        let seconds = t0.elapsed().as_secs_f64();
        let cpu = measure::cpu_time().saturating_sub(cpu0);
        let stats = loader.stats().since(&before);
        runs.push((
            stats.real_tokens as f64 / seconds.max(1e-9),
            seconds,
            cpu,
            stats,
        ));
    }
    let rates: Vec<f64> = runs.iter().map(|r| r.0).collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (_, seconds, cpu, stats) = runs.swap_remove(runs.len() / 2);
    Ok(Timed {
        stats,
        warmup,
        seconds,
        cpu,
        rates,
    })
}

impl BenchArgs {
    /// The loader these arguments describe, over `sources`.
    ///
    /// # Errors
    ///
    /// As [`BenchArgs::check`]; the builder's configuration errors ([`LoaderBuilder::build`]).
    pub fn loader(&self, sources: Vec<Source>) -> Result<Loader<i32>> {
        self.check()?;
        self.builder(sources).build_host()
    }

    /// Checks the arguments against each other (clap checks each on its own).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a `--seq-len` that is not a multiple of `--pad-multiple` (when
    /// padding): rows would be padded past `--seq-len`.
    pub fn check(&self) -> Result<()> {
        let m = self.pad_multiple;
        if !self.pack && m > 1 && !self.seq_len.is_multiple_of(m) {
            return Err(Error::Config(format!(
                "--pad-multiple {m}: --seq-len {} is not a multiple of it, so rows would be \
                 padded past --seq-len (to {}); give a --seq-len that is a multiple of \
                 --pad-multiple",
                self.seq_len,
                self.seq_len
                    .div_ceil(m)
                    .checked_mul(m)
                    .map_or_else(|| "more than 2^64".to_string(), |w| w.to_string())
            )));
        }
        Ok(())
    }

    /// The loader's builder these arguments describe.
    fn builder(&self, sources: Vec<Source>) -> LoaderBuilder<i32> {
        self.builder_with(sources, Shuffle::Full, self.read_ahead)
    }

    /// The builder with another shuffle and read-ahead.
    fn builder_with(
        &self,
        sources: Vec<Source>,
        shuffle: Shuffle,
        read_ahead: usize,
    ) -> LoaderBuilder<i32> {
        let padding = if self.pad_multiple <= 1 {
            Padding::Longest
        } else {
            Padding::Multiple(self.pad_multiple)
        };
        let config = LoaderConfig {
            order: OrderConfig {
                seed: self.seed,
                shuffle,
                local_batch: self.batch_size,
                ..Default::default()
            },
            collate: CollateConfig {
                seq_len: self.seq_len,
                padding,
                pack: self.pack,
                attention_mask: false,
                labels: false,
                position_ids: false,
                ..Default::default()
            },
            transform: TransformConfig {
                eos: self.eos,
                ..Default::default()
            },
            runtime: RuntimeConfig {
                workers: self.workers,
                prefetch: 2 * self.workers.max(1) + 2,
                read_ahead,
                ..Default::default()
            },
            ..Default::default()
        };
        LoaderBuilder::<i32>::from_config(config, sources)
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
    // Bad arguments and a missing device fail now, not after the corpus and the host run.
    a.check()?;
    if a.device == Device::Cuda {
        cuda_available()?;
    }
    let tmp = TempDir::new()?;
    let target = match &a.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
            dir.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let sources = if a.data.is_empty() {
        a.generate(&target)?
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
    // The warm run measures the steady state of a long run: every page mapped before the
    // clock starts (first touches are what `--cold` measures).
    for s in &sources {
        s.data.populate();
    }
    let host = timed(&mut a.loader(sources.clone())?, a.batches, a.rounds)?;
    let cold = if a.cold {
        cold_runs(&a, &sources, host.stats.real_tokens as f64 / host.seconds)?
    } else {
        Vec::new()
    };
    let device = match a.device {
        Device::Host => None,
        Device::Wgpu => Some(wgpu_run(&a, sources, &host)?),
        Device::Cuda => Some(cuda_run(&a, sources, &host)?),
        Device::Null => Some(null_run(&a, sources, &host)?),
    };
    let Timed {
        stats,
        warmup,
        seconds,
        cpu,
        rates,
    } = host;
    let real = stats.real_tokens as f64;
    let padded = stats.padded_tokens as f64;
    let batches = stats.batches;

    // The roofline: copying the bytes the loader hands out (i32 ids, padding included) at the
    // memcpy bandwidth of as many threads as the loader has workers.
    let output_bytes = padded as u64 * 4;
    let memcpy = measure::memcpy_roofline_within(a.workers.max(1), a.roofline_mib << 20);
    // The median copy, like the median round: on a machine shared with other work the fastest
    // copy is an outlier that runs do not reproduce.
    let bandwidth = memcpy.median;
    let report = Report {
        batches,
        warmup_batches: warmup,
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
        cpu_ns_per_real_token: cpu.as_nanos() as f64 / real.max(1.0),
        output_bytes,
        memcpy_gb_per_s: bandwidth / 1e9,
        roofline_ratio: output_bytes as f64 / bandwidth / seconds,
        memcpy,
        rounds: rates.len(),
        round_spread: spread(&rates),
        round_rates: rates,
        stats,
        cold,
        device,
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
             rounds            {:>10} (median shown; spread {:.3})\n\
             memcpy            {:>10.1} GB/s ({} threads, median of {} copies of {} MiB, spread {:.3})\n\
             roofline ratio    {:>10.2} (memcpy time of the {} output bytes / loader time)",
            a.batch_size,
            a.workers,
            report.real_tokens_per_s / 1e6,
            report.padded_tokens_per_s / 1e6,
            report.batches_per_s,
            report.padding_ratio,
            report.cpu_ns_per_real_token,
            report.rounds,
            report.round_spread,
            report.memcpy_gb_per_s,
            a.workers.max(1),
            report.memcpy.runs,
            report.memcpy.bytes >> 20,
            report.memcpy.spread,
            report.roofline_ratio,
            report.output_bytes,
        )?;
        for w in &report.stats.workers {
            outln!(
                out,
                "worker {:<3} {:>7} batches, {:>8.1} M real tokens per busy second, {}",
                w.index,
                w.batches,
                w.tokens_per_s / 1e6,
                w.status
            )?;
        }
        for c in &report.cold {
            outln!(
                out,
                "cold {:<9} read-ahead {:>3}: {:>8.1} M real tokens/s ({:.2} of warm), {} major \
                 faults",
                c.shuffle,
                c.read_ahead,
                c.real_tokens_per_s / 1e6,
                c.over_warm,
                c.major_faults
            )?;
        }
        if let Some(d) = &report.device {
            outln!(
                out,
                "device sink       {:>10.0} batches/s on {} (host sink {:.0}; {:.2}x)\n\
                 CPU ns/real token {:>10.2} {} sink, {:.2} host sink (same batches)\n\
                 bytes per batch   {:>10.0} ragged, {:.0} padded ({:.2}x fewer), {} buffers \
                 created",
                d.batches_per_s,
                d.adapter,
                d.host_batches_per_s,
                d.batches_per_s / d.host_batches_per_s,
                d.cpu_ns_per_real_token,
                d.adapter,
                d.host_cpu_ns_per_real_token,
                d.bytes_per_batch,
                d.padded_bytes_per_batch,
                d.padded_over_ragged,
                d.buffers_created,
            )?;
            if let (Some(gb), Some(ratio)) = (d.pinned_h2d_gb_per_s, d.bus_ratio) {
                outln!(
                    out,
                    "pinned H2D copy   {gb:>10.2} GB/s; bus ratio {ratio:.3} (copy time of the \
                     batches' bytes / sink time)"
                )?;
            }
        }
    }
    out.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// `(largest - smallest) / largest` of `xs` (0 for fewer than two).
fn spread(xs: &[f64]) -> f64 {
    let hi = xs.iter().copied().fold(f64::MIN, f64::max);
    let lo = xs.iter().copied().fold(f64::MAX, f64::min);
    if xs.len() < 2 || hi <= 0.0 {
        0.0
    } else {
        (hi - lo) / hi
    }
}

/// The `--cold` runs: full and block shuffle, each without and with plan-driven prefetch, each
/// from a page cache the shards were dropped from.
fn cold_runs(a: &BenchArgs, sources: &[Source], warm_rate: f64) -> Result<Vec<ColdRun>> {
    let ahead = if a.read_ahead == 0 { 16 } else { a.read_ahead };
    let block = 64;
    let mut out = Vec::new();
    for (shuffle, read_ahead) in [
        (Shuffle::Full, 0),
        (Shuffle::Full, ahead),
        (Shuffle::Block(block), 0),
        (Shuffle::Block(block), ahead),
    ] {
        for s in sources {
            s.data.evict()?;
        }
        let mut loader = a
            .builder_with(sources.to_vec(), shuffle, read_ahead)
            .build_host()?;
        let faults = measure::major_faults();
        let start = Instant::now();
        for b in loader.by_ref().take(a.batches) {
            b?;
        }
        let stats = loader.stats();
        let (real, batches) = (stats.real_tokens, stats.batches);
        let rate = real as f64 / start.elapsed().as_secs_f64();
        out.push(ColdRun {
            shuffle: shuffle.to_string(),
            read_ahead,
            batches,
            real_tokens_per_s: rate,
            major_faults: measure::major_faults().saturating_sub(faults),
            over_warm: rate / warm_rate,
        });
    }
    Ok(out)
}

/// Times the wgpu sink on the same batches as the host run, each waited for on the device.
#[cfg(feature = "wgpu")]
fn wgpu_run(a: &BenchArgs, sources: Vec<Source>, host: &Timed) -> Result<DeviceReport> {
    use crate::device::WgpuSink;
    use crate::gpu::WgpuContext;
    let ctx = WgpuContext::new()?;
    let mut loader = a.builder(sources).build(WgpuSink::new(ctx.clone())?)?;
    let run = timed(&mut loader, a.batches, a.rounds)?;
    Ok(DeviceReport::new(
        ctx.name().to_string(),
        &run,
        host,
        &loader.sink().stats(),
    ))
}

/// Without the `wgpu` feature there is no device to run on.
#[cfg(not(feature = "wgpu"))]
fn wgpu_run(_: &BenchArgs, _: Vec<Source>, _: &Timed) -> Result<DeviceReport> {
    Err(Error::Config(
        "--device wgpu: this shardflow was built without the wgpu feature".into(),
    ))
}

/// Times the null sink (the device sinks' host-side staging, each batch then dropped) on the
/// same batches as the host run.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn null_run(a: &BenchArgs, sources: Vec<Source>, host: &Timed) -> Result<DeviceReport> {
    use crate::device::NullSink;
    let mut loader = a.builder(sources).build(NullSink::new())?;
    let run = timed(&mut loader, a.batches, a.rounds)?;
    let stats = loader.sink().stats();
    Ok(DeviceReport::new("null".into(), &run, host, &stats))
}

/// The null sink shares the device sinks' staging, built with either device feature.
#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn null_run(_: &BenchArgs, _: Vec<Source>, _: &Timed) -> Result<DeviceReport> {
    Err(Error::Config(
        "--device null: this shardflow was built without the wgpu and cuda features, whose \
         staging it measures"
            .into(),
    ))
}

/// Times the CUDA sink on the same batches as the host run, each waited for on the device, and
/// a pinned host-to-device copy of as many bytes per copy as a batch sends.
#[cfg(feature = "cuda")]
fn cuda_run(a: &BenchArgs, sources: Vec<Source>, host: &Timed) -> Result<DeviceReport> {
    let sink = cuda_sink()?;
    let ctx = sink.context().clone();
    let mut loader = a.builder(sources).build(sink)?;
    let run = timed(&mut loader, a.batches, a.rounds)?;
    let stats = loader.sink().stats();
    let mut report = DeviceReport::new(ctx.label(), &run, host, &stats);
    let per_batch = report.bytes_per_batch.ceil() as usize;
    let bandwidth = ctx.pinned_copy_bandwidth(per_batch.max(1), a.batches.clamp(10, 1000))?;
    let bus_bytes = report.bytes_per_batch * run.stats.batches as f64;
    report.pinned_h2d_gb_per_s = Some(bandwidth / 1e9);
    report.bus_ratio = Some(bus_bytes / bandwidth / run.seconds);
    Ok(report)
}

/// The CUDA sink on device 0.
#[cfg(feature = "cuda")]
fn cuda_sink() -> Result<crate::device::CudaSink> {
    crate::device::CudaSink::for_local_rank(0)
}

/// Whether the CUDA sink can be built here, or why not.
#[cfg(feature = "cuda")]
fn cuda_available() -> Result<()> {
    cuda_sink().map(drop)
}

#[cfg(not(feature = "cuda"))]
fn cuda_available() -> Result<()> {
    Err(no_cuda())
}

#[cfg(not(feature = "cuda"))]
fn cuda_run(_: &BenchArgs, _: Vec<Source>, _: &Timed) -> Result<DeviceReport> {
    Err(no_cuda())
}

/// Without the `cuda` feature there is no CUDA device to run on.
#[cfg(not(feature = "cuda"))]
fn no_cuda() -> Error {
    Error::Config(
        "--device cuda: this shardflow was built without the cuda feature (cargo run \
         --release --features cuda -- bench --device cuda)"
            .into(),
    )
}
