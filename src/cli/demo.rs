//! `shardflow demo`: the whole host pipeline on the built-in corpus. Writes the corpus, runs a
//! mixture of its datasets on two ranks (threads) with two workers each, checkpoints at a step,
//! resumes in fresh loaders (with another worker count) and compares the continuation batch for
//! batch. A mismatch exits non-zero. The ranks write a metrics history, which is merged and
//! summarized at the end.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use crate::atomic::TempDir;
use crate::collate::{CollateConfig, Padding};
use crate::collective::{Collective, in_process};
use crate::device::{DeviceBatch, DeviceSink, HostSink};
use crate::hash::fnv1a;
use crate::history::{HistoryConfig, HistoryFiles, Recorder, Summary, compact, summarize};
use crate::loader::{Loader, LoaderBuilder, LoaderConfig, LoaderState, LoaderStats, Source};
use crate::metrics::{Report, ReportValue};
use crate::order::OrderConfig;
use crate::shard::synthetic::SyntheticCorpus;
use crate::transform::TransformConfig;
use crate::{Error, Result};
use indicatif::ProgressBar;

use super::inspect::{Report as ShardReport, table};
use super::{Out, outln};

const WORLD: usize = 2;
const STEPS: usize = 400;
const CHECKPOINT_AT: usize = 150;
const WEIGHTS: [f64; 3] = [0.5, 0.3, 0.2];
/// Steps between the metrics written to the history.
const HISTORY_EVERY: u64 = 50;

/// The file that marks a directory as the demo's: a later run there starts afresh.
const MARKER: &str = ".shardflow-demo";

/// Where the demo's metrics history goes.
fn history_dir(dir: &Path) -> PathBuf {
    dir.join("history")
}

/// The files the demo writes in its directory, besides the history and the marker: the corpus's
/// shards and every rank's checkpoint.
fn demo_files(dir: &Path) -> Vec<PathBuf> {
    let corpus = SyntheticCorpus::demo();
    let mut files = Vec::new();
    for spec in &corpus.datasets {
        let (idx, bin) = crate::shard::shard_paths(&corpus.prefix(dir, spec));
        files.extend([idx, bin]);
    }
    files.extend((0..WORLD).map(|rank| checkpoint_path(dir, rank)));
    files
}

/// Rank `rank`'s checkpoint.
fn checkpoint_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("checkpoint-rank{rank}.json"))
}

/// Makes `dir` the demo's for a fresh run: creates it, or where an earlier demo run left it
/// (its marker), removes what that run wrote (corpus, checkpoints, history) and nothing else.
///
/// # Errors
///
/// [`Error::Config`] for a directory that holds files and no marker: the demo would overwrite
/// or mix with them, so it names them and asks for a new or empty directory. [`Error::Io`]
/// naming what cannot be created, listed or removed.
fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "create", e))?;
    let marker = dir.join(MARKER);
    if marker.is_file() {
        for file in demo_files(dir) {
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(&file, "remove", e));
                }
                _ => {}
            }
        }
        let history = history_dir(dir);
        match std::fs::remove_dir_all(&history) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&history, "remove", e));
            }
            _ => {}
        }
        return Ok(());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, "list", e))? {
        let entry = entry.map_err(|e| Error::io(dir, "list", e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    if !names.is_empty() {
        names.sort();
        let shown = match names.len() {
            n if n > 3 => format!("{}, and {} more", names[..3].join(", "), n - 3),
            _ => names.join(", "),
        };
        return Err(Error::Config(format!(
            "demo --dir {}: the directory holds files that the demo did not write ({shown}); \
             give a new or empty directory (a directory of an earlier demo run is started \
             afresh)",
            dir.display()
        )));
    }
    crate::atomic::write_atomic(
        &marker,
        b"Written by `shardflow demo --dir`: a later run here removes the demo's corpus, \
          checkpoints and history and starts afresh; other files are left alone.\n",
    )
}

/// Runs the demo in `dir` (a temporary directory when `None`).
///
/// # Errors
///
/// As [`prepare`]; the corpus writer's, the loaders' and the history's errors; a write error on
/// stdout.
pub fn run(dir: Option<PathBuf>) -> Result<ExitCode> {
    let tmp;
    let dir = match dir {
        Some(d) => {
            prepare(&d)?;
            d
        }
        None => {
            tmp = TempDir::new()?;
            tmp.path().to_path_buf()
        }
    };
    let mut out = Out::new();
    let corpus = SyntheticCorpus::demo();
    outln!(
        out,
        "shardflow demo: writing the built-in corpus (seed {}) to {}",
        corpus.seed,
        dir.display()
    )?;
    out.show()?;
    let bar = super::progress_bar(
        Some(corpus.expected_tokens()),
        "{spinner} writing [{bar:30}] {pos}/{len} tokens ({per_sec}, {elapsed})",
    );
    let start = Instant::now();
    let written = corpus.write(&dir, |tokens| bar.set_position(tokens))?;
    bar.finish_and_clear();
    let tokens: u64 = written.iter().map(|s| s.tokens).sum();
    outln!(
        out,
        "wrote {} datasets, {tokens} tokens in {:.2} s",
        written.len(),
        start.elapsed().as_secs_f64()
    )?;
    let reports = written
        .iter()
        .map(|s| ShardReport::of(&s.prefix, false))
        .collect::<Result<Vec<_>>>()?;
    out.text(&table(&reports))?;

    let sources = written
        .iter()
        .zip(WEIGHTS)
        .map(|(s, w)| Source::open(&s.prefix, w))
        .collect::<Result<Vec<_>>>()?;
    let device = Device::find();
    match &device {
        Device::Host(why) => outln!(
            out,
            "\ndevice: the host sink ({why}); batches stay in host memory"
        )?,
        #[cfg(feature = "wgpu")]
        Device::Wgpu(ctx) => outln!(
            out,
            "\ndevice: {} (f64 in shaders: {}); batches are padded there, metrics reduced on the \
             host",
            ctx.name(),
            ctx.has_f64()
        )?,
    }
    outln!(
        out,
        "loading: mixture web/code/books {WEIGHTS:?}, {WORLD} ranks x 2 workers, 8 rows per rank, \
         {STEPS} steps; checkpoint at step {CHECKPOINT_AT}, then resume with 1 worker"
    )?;
    out.show()?;
    let bar = super::progress_bar(
        Some((WORLD * (STEPS + STEPS - CHECKPOINT_AT)) as u64),
        "{spinner} batches [{bar:30}] {pos}/{len} ({per_sec}, {elapsed})",
    );
    let start = Instant::now();
    let world = device.world();
    let runs: Vec<Result<RankRun>> = std::thread::scope(|s| {
        let handles: Vec<_> = world
            .iter()
            .enumerate()
            .map(|(rank, c)| {
                let (sources, dir, bar, device) = (&sources, &dir, &bar, &device);
                s.spawn(move || device.run_rank(sources, rank, c.clone(), dir, bar))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a demo rank thread panicked"))
            .collect()
    });
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let runs = runs.into_iter().collect::<Result<Vec<_>>>()?;
    let mut compared = 0;
    let mut identical = true;
    outln!(out, "rank  batches  real tokens  padding  first mismatch")?;
    for (rank, run) in runs.iter().enumerate() {
        let s = &run.stats;
        let padding = 1.0 - s.real_tokens as f64 / s.padded_tokens.max(1) as f64;
        let mismatch = run
            .mismatch
            .map_or("-".to_string(), |k| format!("step {k}"));
        outln!(
            out,
            "{rank:>4}  {:>7}  {:>11}  {padding:>7.3}  {mismatch}",
            s.batches,
            s.real_tokens
        )?;
        compared += run.compared;
        identical &= run.mismatch.is_none();
    }
    outln!(out, "\ndata metrics, reduced over both ranks:")?;
    out.text(&metrics_table(&runs[0].metrics))?;
    let same_metrics = runs
        .iter()
        .all(|r| r.metrics == r.resumed_metrics && r.metrics == runs[0].metrics);
    outln!(
        out,
        "\nresumed from the step-{CHECKPOINT_AT} checkpoints and compared {compared} batches: {}; \
         reduced metric totals after resume: {} ({seconds:.2} s in all)",
        if identical { "identical" } else { "MISMATCH" },
        if same_metrics {
            "equal to the uninterrupted run"
        } else {
            "DIFFERENT"
        }
    )?;
    // The history the ranks wrote (metrics every HISTORY_EVERY steps, each document's length),
    // merged into one file per table and summarized.
    let history = history_dir(&dir);
    let compacted = compact(&history)?;
    let summary = summarize(&history, HistoryFiles::Merged, Some((3, "tokens")))?;
    outln!(
        out,
        "\nmetrics history ({} steps rows, {} samples rows; resumed steps replaced, none twice):",
        compacted.steps_rows,
        compacted.samples_rows
    )?;
    let shown = Summary {
        series: summary
            .series
            .iter()
            .filter(|x| x.stat == "value" || x.stat == "p50")
            .cloned()
            .collect(),
        ..summary.clone()
    };
    super::history::print(&mut out, &history, &shown, Some("tokens"))?;
    outln!(
        out,
        "(all stats: shardflow history {0}; in Polars: pl.scan_parquet(\"{0}/steps/*.parquet\"))",
        history.display()
    )?;
    out.finish()?;
    Ok(if identical && same_metrics {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The standard metrics per dataset as a table.
fn metrics_table(report: &Report) -> String {
    let mut out = String::from(
        "dataset  samples     tokens  seq_len mean    p05    p50    p95    max  epoch  truncated  failed\n",
    );
    for (d, metrics) in &report.datasets {
        let n = |m: &str| report.number(d, m).unwrap_or(0.0);
        let stat = |s: &str| match metrics.get("seq_len") {
            Some(ReportValue::Stats(st)) => st.get(s).copied().unwrap_or(0.0),
            _ => 0.0,
        };
        out.push_str(&format!(
            "{d:<7}  {:>7}  {:>9}  {:>12.1}  {:>5.0}  {:>5.0}  {:>5.0}  {:>5.0}  {:>5}  {:>9}  {:>6}\n",
            n("samples_seen"),
            n("tokens_seen"),
            stat("mean"),
            stat("p05"),
            stat("p50"),
            stat("p95"),
            stat("max"),
            n("epoch"),
            n("samples_truncated"),
            n("samples_failed"),
        ));
    }
    out
}

struct RankRun {
    stats: LoaderStats,
    compared: usize,
    mismatch: Option<usize>,
    /// The uninterrupted run's metrics, reduced over the ranks.
    metrics: Report,
    /// The resumed run's metrics (restored from the checkpoint), reduced over the ranks.
    resumed_metrics: Report,
}

fn loader(sources: &[Source], rank: usize, workers: usize) -> LoaderBuilder<i32> {
    let config = LoaderConfig {
        order: OrderConfig {
            seed: 2026,
            world: WORLD,
            rank,
            local_batch: 8,
            ..Default::default()
        },
        collate: CollateConfig {
            seq_len: 1024,
            padding: Padding::Multiple(8),
            ..Default::default()
        },
        transform: TransformConfig {
            eos: Some(50_256),
            ..Default::default()
        },
        ..Default::default()
    }
    .with_workers(workers);
    LoaderBuilder::from_config(config, sources.to_vec())
}

/// Where the demo's batches go: a wgpu adapter when there is one, else host memory (with the
/// reason).
enum Device {
    Host(String),
    #[cfg(feature = "wgpu")]
    Wgpu(std::sync::Arc<crate::gpu::WgpuContext>),
}

impl Device {
    #[cfg(feature = "wgpu")]
    fn find() -> Device {
        match crate::gpu::WgpuContext::new() {
            Ok(ctx) => Device::Wgpu(ctx),
            Err(e) => Device::Host(e.to_string()),
        }
    }

    #[cfg(not(feature = "wgpu"))]
    fn find() -> Device {
        Device::Host("built without the wgpu feature".into())
    }

    /// The ranks' collectives: the host's in-process world on every device. The ranks are threads
    /// sharing host memory, where the metrics are aggregated: a device reduce would only add an
    /// upload and a readback to a few thousand additions.
    fn world(&self) -> Vec<Arc<dyn Collective>> {
        in_process(WORLD, std::time::Duration::from_secs(60))
            .into_iter()
            .map(|c| Arc::new(c) as Arc<dyn Collective>)
            .collect()
    }

    fn run_rank(
        &self,
        sources: &[Source],
        rank: usize,
        world: Arc<dyn Collective>,
        dir: &Path,
        bar: &ProgressBar,
    ) -> Result<RankRun> {
        let run = Run {
            sources,
            rank,
            world,
            dir,
            bar,
        };
        match self {
            Device::Host(_) => run.go(|| Ok(HostSink::new())),
            #[cfg(feature = "wgpu")]
            Device::Wgpu(ctx) => run.go(|| crate::device::WgpuSink::new(ctx.clone())),
        }
    }
}

/// One rank's part of the demo.
struct Run<'a> {
    sources: &'a [Source],
    rank: usize,
    world: Arc<dyn Collective>,
    dir: &'a Path,
    bar: &'a ProgressBar,
}

impl Run<'_> {
    /// Runs the rank uninterrupted, checkpointing on the way, then resumes from the checkpoint
    /// in a fresh loader and compares. A batch's host copy gives the digest; the lengths of its
    /// documents go to the history as per-sample values.
    fn go<S: DeviceSink<i32>>(&self, sink: impl Fn() -> Result<S>) -> Result<RankRun>
    where
        S::Output: DeviceBatch<i32>,
    {
        let (sources, rank, bar) = (self.sources, self.rank, self.bar);
        let ckpt = checkpoint_path(self.dir, rank);
        let history = HistoryConfig::new(history_dir(self.dir), "demo", rank);
        let build = |workers: usize, state: Option<LoaderState>| {
            loader(sources, rank, workers).resume(state).build(sink()?)
        };
        // After every batch, on every rank: the metrics every HISTORY_EVERY steps, reduced over
        // the ranks (a collective), and the length of every document to the samples table.
        let world = &*self.world;
        let record = |loader: &mut Loader<i32, S>, recorder: &mut Recorder, batch: &S::Output| {
            let last = loader.last_batch();
            let step = last.step;
            recorder.after_batch(step, last.skipped, last.metrics, Some(world))?;
            let docs = batch.docs();
            let lengths: Vec<f64> = docs.iter().map(|d| d.len as f64).collect();
            recorder.record_values(step, docs, "tokens", &lengths)
        };
        let mut digests = Vec::with_capacity(STEPS);
        let mut first = build(2, None)?;
        let mut recorder = Recorder::create(history.clone(), HISTORY_EVERY, first.plan().names())?;
        for step in 0..STEPS {
            if step == CHECKPOINT_AT {
                let mut state = first.state();
                state.history_step = recorder.checkpoint()?;
                state.save(&ckpt)?;
            }
            let batch = first
                .next()
                .ok_or_else(|| Error::CheckFailed("the demo stream ended early".into()))??;
            digests.push(fnv1a(&batch.to_host()?.to_bytes()));
            record(&mut first, &mut recorder, &batch)?;
            bar.inc(1);
        }
        let stats = first.stats();
        let metrics = first.metrics_mut().reduce(&*self.world)?.report();
        // What the first run buffered goes to disk before the resumed run drops its later steps.
        drop(recorder);
        drop(first);
        let state = LoaderState::load(&ckpt)?;
        let last_step = state.history_step;
        let mut resumed = build(1, Some(state))?;
        let names = resumed.plan().names();
        let mut recorder = Recorder::resume(history, HISTORY_EVERY, names, last_step)?;
        let mut mismatch = None;
        for (step, want) in digests.iter().enumerate().skip(CHECKPOINT_AT) {
            let batch = resumed
                .next()
                .ok_or_else(|| Error::CheckFailed("the resumed stream ended early".into()))??;
            if fnv1a(&batch.to_host()?.to_bytes()) != *want && mismatch.is_none() {
                mismatch = Some(step);
            }
            record(&mut resumed, &mut recorder, &batch)?;
            bar.inc(1);
        }
        let resumed_metrics = resumed.metrics_mut().reduce(&*self.world)?.report();
        Ok(RankRun {
            stats,
            compared: STEPS - CHECKPOINT_AT,
            mismatch,
            metrics,
            resumed_metrics,
        })
    }
}
