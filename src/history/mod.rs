//! The metrics history (feature `history`): per-step metric values and per-sample values streamed
//! to Parquet in bounded memory, two tables in long format under a run's directory:
//!
//! - `DIR/steps/`: run, step, rank (`all` for values reduced over the ranks), dataset, metric,
//!   stat, value, wall_time: one row per reported value ([`HistoryWriter::record_report`]).
//!   Numbers report the stat `value`; distributions their statistics (`count`, `mean`, `p50`,
//!   ...); categoricals one row per category.
//! - `DIR/samples/`: run, step, rank, dataset, sample, epoch, name, value, status: one row per
//!   per-sample value (a loss, say; [`HistoryWriter::record_sample`]). A skipped or failed sample
//!   keeps its row with its status and a null value, never a silent NaN.
//!
//! Rows are buffered up to [`HistoryConfig::max_rows`] per table, then written as a part file
//! (`rRRRRR-SSSSSSSS-sFIRST-LAST.parquet`: rank, sequence number, step range), atomically
//! (temporary name, fsync, rename), so a crash leaves whole parts only and loses at most the
//! unflushed buffer. Each rank writes its own parts. [`HistoryWriter::finish`] (or
//! [`compact`], `shardflow history compact DIR`) merges the parts into `DIR/steps.parquet` and
//! `DIR/samples.parquet`; the parts stay, and reading either gives the same rows.
//!
//! A resumed run ([`HistoryWriter::resume`]) appends to the same directory after removing the
//! rows of steps past the checkpoint's last written step, so no step is ever written twice.
//!
//! A training loop writes a loader's history through a [`Recorder`]: it calls
//! [`Recorder::after_batch`] after every batch, passing the collective that reduces the metrics
//! (every rank at the same steps), and [`Recorder::checkpoint`] beside the loader's state. The
//! loader itself knows nothing of histories.

mod recorder;
mod summary;
mod table;

pub use recorder::*;
pub use summary::*;

use std::path::{Path, PathBuf};

use table::{Rows, SAMPLES, STEP, STEPS, TableDef, TableWriter, Value};

use crate::atomic::{AtomicFile, write_atomic};
use crate::collate::DocRef;
use crate::error::{Error, Result};
use crate::metrics::{Report, ReportValue};

/// Where and how a history is written.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryConfig {
    /// The run's directory (created when missing).
    pub dir: PathBuf,
    /// The run's name, in every row.
    pub run: String,
    /// The rank writing.
    pub rank: usize,
    /// Rows buffered per table before a part is written.
    pub max_rows: usize,
}

impl HistoryConfig {
    /// Rows per part by default: at most about 4 MB of buffer per table (`benches/history.rs`).
    pub const DEFAULT_MAX_ROWS: usize = 1 << 16;

    /// Rank `rank`'s history of run `run` in `dir`, with the default buffer.
    pub fn new(dir: impl Into<PathBuf>, run: impl Into<String>, rank: usize) -> Self {
        HistoryConfig {
            dir: dir.into(),
            run: run.into(),
            rank,
            max_rows: Self::DEFAULT_MAX_ROWS,
        }
    }
}

/// What became of a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleStatus {
    /// Its value was recorded.
    Ok,
    /// The loader skipped it (a bad sample under the skip policy).
    Skipped,
    /// Its value could not be computed (not finite, or the step failed).
    Failed,
}

impl SampleStatus {
    /// The name the `status` column holds.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleStatus::Ok => "ok",
            SampleStatus::Skipped => "skipped",
            SampleStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ok" => Some(SampleStatus::Ok),
            "skipped" => Some(SampleStatus::Skipped),
            "failed" => Some(SampleStatus::Failed),
            _ => None,
        }
    }
}

/// A row of `steps`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepRow {
    /// The run.
    pub run: String,
    /// The step.
    pub step: u64,
    /// The rank, or `all` for values reduced over the ranks.
    pub rank: String,
    /// The dataset.
    pub dataset: String,
    /// The metric.
    pub metric: String,
    /// `value` for numbers; a statistic's or a category's name otherwise.
    pub stat: String,
    /// The value.
    pub value: f64,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub wall_time_ms: i64,
}

/// A row of `samples`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SampleRow {
    /// The run.
    pub run: String,
    /// The step.
    pub step: u64,
    /// The rank that recorded it.
    pub rank: u64,
    /// The sample's dataset.
    pub dataset: String,
    /// The sample's index in its dataset.
    pub sample: u64,
    /// The dataset epoch it was drawn in.
    pub epoch: u64,
    /// What the value is (`loss`).
    pub name: String,
    /// The value; `None` unless the status is `ok`.
    pub value: Option<f64>,
    /// What became of the sample.
    pub status: SampleStatus,
}

impl StepRow {
    fn from_rows(rows: &Rows, i: usize) -> Self {
        StepRow {
            run: rows.str(0, i).to_string(),
            step: rows.i64(1, i) as u64,
            rank: rows.str(2, i).to_string(),
            dataset: rows.str(3, i).to_string(),
            metric: rows.str(4, i).to_string(),
            stat: rows.str(5, i).to_string(),
            value: rows.f64(6, i).unwrap_or(f64::NAN),
            wall_time_ms: rows.i64(7, i),
        }
    }
}

impl SampleRow {
    fn from_rows(rows: &Rows, i: usize) -> Result<Self> {
        let status = rows.str(8, i);
        Ok(SampleRow {
            run: rows.str(0, i).to_string(),
            step: rows.i64(1, i) as u64,
            rank: rows.i64(2, i) as u64,
            dataset: rows.str(3, i).to_string(),
            sample: rows.i64(4, i) as u64,
            epoch: rows.i64(5, i) as u64,
            name: rows.str(6, i).to_string(),
            value: rows.f64(7, i),
            status: SampleStatus::parse(status).ok_or_else(|| Error::History {
                path: PathBuf::new(),
                reason: format!("unknown sample status {status:?}"),
            })?,
        })
    }
}

/// One table's buffer and part numbering.
struct Parts {
    table: &'static TableDef,
    rows: Rows,
    /// The next part's sequence number.
    seq: u64,
    /// The steps of the buffered rows.
    first: Option<u64>,
    last: Option<u64>,
}

impl Parts {
    fn new(table: &'static TableDef, seq: u64) -> Self {
        Parts {
            table,
            rows: table.rows(),
            seq,
            first: None,
            last: None,
        }
    }

    fn note_step(&mut self, step: u64) {
        self.first = Some(self.first.map_or(step, |f| f.min(step)));
        self.last = Some(self.last.map_or(step, |l| l.max(step)));
    }

    /// Writes the buffer as the next part, atomically.
    fn flush(&mut self, dir: &Path, rank: usize) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let name = PartName {
            rank,
            seq: self.seq,
            first: self.first.unwrap_or(0),
            last: self.last.unwrap_or(0),
        };
        let path = table_dir(dir, self.table).join(name.file());
        let bytes = table::to_parquet(&self.rows).map_err(|e| at(&path, e))?;
        write_atomic(&path, &bytes)?;
        self.seq += 1;
        self.rows = self.table.rows();
        (self.first, self.last) = (None, None);
        Ok(())
    }
}

/// Streams a run's metric history to Parquet part files (see the module's documentation).
pub struct HistoryWriter {
    config: HistoryConfig,
    steps: Parts,
    samples: Parts,
    /// The last step recorded.
    last_step: Option<u64>,
    /// The last step whose rows are all in part files.
    durable_step: Option<u64>,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("config", &self.config)
            .field("buffered_rows", &self.buffered_rows())
            .field("last_step", &self.last_step)
            .finish()
    }
}

impl HistoryWriter {
    /// A new history for `config.rank` in `config.dir`.
    ///
    /// # Errors
    ///
    /// [`Error::History`] when the directory already holds parts of this rank (resume with
    /// [`HistoryWriter::resume`], or use a new directory); [`Error::Io`] when it cannot be
    /// created.
    pub fn create(config: HistoryConfig) -> Result<Self> {
        Self::open(config, None, false)
    }

    /// Continues `config.rank`'s history after a checkpoint whose last written step was
    /// `last_step` (`None`: nothing was written): this rank's rows of later steps are removed
    /// (whole parts deleted, a part that straddles the step rewritten atomically), so the
    /// resumed run writes each step once.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]; [`Error::History`] naming a part that cannot be read.
    pub fn resume(config: HistoryConfig, last_step: Option<u64>) -> Result<Self> {
        Self::open(config, last_step, true)
    }

    fn open(config: HistoryConfig, last_step: Option<u64>, resume: bool) -> Result<Self> {
        if config.max_rows == 0 {
            return Err(Error::Config("history max_rows must be at least 1".into()));
        }
        let mut next_seq = 0;
        for table in [&STEPS, &SAMPLES] {
            let dir = table_dir(&config.dir, table);
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create", e))?;
            let mine: Vec<(PartName, PathBuf)> = list_parts(&config.dir, table)?
                .into_iter()
                .filter(|(n, _)| n.rank == config.rank)
                .collect();
            if !resume && !mine.is_empty() {
                return Err(Error::History {
                    path: config.dir.clone(),
                    reason: format!(
                        "already holds {} parts of rank {}; resume from a checkpoint or use a \
                         new directory",
                        table.name, config.rank
                    ),
                });
            }
            for (name, path) in mine {
                next_seq = next_seq.max(name.seq + 1);
                truncate_part(table, &path, &name, last_step)?;
            }
        }
        Ok(HistoryWriter {
            steps: Parts::new(&STEPS, next_seq),
            samples: Parts::new(&SAMPLES, next_seq),
            config,
            last_step,
            durable_step: last_step,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    /// The last step recorded (buffered or written).
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }

    /// The last step whose rows are all in part files: what a checkpoint records.
    pub fn durable_step(&self) -> Option<u64> {
        self.durable_step
    }

    /// Rows buffered, both tables.
    pub fn buffered_rows(&self) -> usize {
        self.steps.rows.len() + self.samples.rows.len()
    }

    /// Bytes buffered, both tables.
    pub fn buffered_bytes(&self) -> usize {
        self.steps.rows.bytes() + self.samples.rows.bytes()
    }

    fn note(&mut self, step: u64) {
        self.last_step = Some(self.last_step.map_or(step, |l| l.max(step)));
    }

    /// Records every value of `report` at `step`, for `rank` (`None`: reduced over all ranks,
    /// written as `all`; rank 0 writes those after the metric reduce).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::History`] when a full buffer's part cannot be written.
    pub fn record_report(&mut self, step: u64, rank: Option<usize>, report: &Report) -> Result<()> {
        let rank = rank.map_or_else(|| "all".to_string(), |r| r.to_string());
        let now = now_ms();
        let run = self.config.run.clone();
        for (dataset, metrics) in &report.datasets {
            for (metric, value) in metrics {
                let mut row = |stat: &str, v: f64| -> Result<()> {
                    self.steps.rows.push(&[
                        Value::Str(&run),
                        Value::I64(step as i64),
                        Value::Str(&rank),
                        Value::Str(dataset),
                        Value::Str(metric),
                        Value::Str(stat),
                        Value::F64(v),
                        Value::I64(now),
                    ]);
                    self.steps.note_step(step);
                    self.flush_if_full()
                };
                match value {
                    ReportValue::Number(v) => row("value", *v)?,
                    ReportValue::Stats(stats) => {
                        for (s, v) in stats {
                            row(s, *v)?;
                        }
                    }
                    ReportValue::Counts(counts) => {
                        for (c, n) in counts {
                            row(c, *n as f64)?;
                        }
                    }
                }
            }
        }
        self.note(step);
        Ok(())
    }

    /// Records one per-sample value. A value that is not finite is recorded as `failed` with a
    /// null value; a `skipped` or `failed` sample's value is always null.
    ///
    /// # Errors
    ///
    /// As [`HistoryWriter::record_report`].
    pub fn record_sample(
        &mut self,
        step: u64,
        doc: &SampleOf<'_>,
        name: &str,
        value: Option<f64>,
        status: SampleStatus,
    ) -> Result<()> {
        let (value, status) = match (status, value) {
            (SampleStatus::Ok, Some(v)) if v.is_finite() => (Some(v), SampleStatus::Ok),
            (SampleStatus::Ok, _) => (None, SampleStatus::Failed),
            (other, _) => (None, other),
        };
        self.samples.rows.push(&[
            Value::Str(&self.config.run),
            Value::I64(step as i64),
            Value::I64(self.config.rank as i64),
            Value::Str(doc.dataset),
            Value::I64(doc.sample as i64),
            Value::I64(doc.epoch as i64),
            Value::Str(name),
            Value::OptF64(value),
            Value::Str(status.as_str()),
        ]);
        self.samples.note_step(step);
        self.note(step);
        self.flush_if_full()
    }

    /// Records `values[i]` (a loss, say) for the sample of `docs[i]` of a batch at `step`, its
    /// dataset named by `names`. Documents with no real tokens (dropped or skipped pieces) are
    /// recorded as `skipped`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the counts differ; as [`HistoryWriter::record_report`].
    pub fn record_batch_values(
        &mut self,
        step: u64,
        docs: &[DocRef],
        names: &[String],
        name: &str,
        values: &[f64],
    ) -> Result<()> {
        if docs.len() != values.len() {
            return Err(Error::Config(format!(
                "{} values for {} documents of step {step}",
                values.len(),
                docs.len()
            )));
        }
        for (d, &v) in docs.iter().zip(values) {
            let of = SampleOf {
                dataset: names.get(d.dataset as usize).map_or("?", String::as_str),
                sample: d.sample,
                epoch: d.epoch,
            };
            let status = if d.len == 0 {
                SampleStatus::Skipped
            } else {
                SampleStatus::Ok
            };
            self.record_sample(step, &of, name, Some(v), status)?;
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        let (dir, rank, max) = (&self.config.dir, self.config.rank, self.config.max_rows);
        for parts in [&mut self.steps, &mut self.samples] {
            if parts.rows.len() >= max {
                parts.flush(dir, rank)?;
            }
        }
        Ok(())
    }

    /// Writes both buffers as parts: afterwards every recorded row is on disk.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the part.
    pub fn flush(&mut self) -> Result<()> {
        let (dir, rank) = (&self.config.dir, self.config.rank);
        self.steps.flush(dir, rank)?;
        self.samples.flush(dir, rank)?;
        self.durable_step = self.last_step;
        Ok(())
    }

    /// Flushes, then merges every rank's parts into `DIR/steps.parquet` and
    /// `DIR/samples.parquet` (call it on one rank, after the others have flushed).
    ///
    /// # Errors
    ///
    /// As [`HistoryWriter::flush`] and [`compact`].
    pub fn finish(mut self) -> Result<Compacted> {
        self.flush()?;
        compact(&self.config.dir)
    }
}

/// The sample a per-sample value belongs to.
#[derive(Clone, Copy, Debug)]
pub struct SampleOf<'a> {
    /// Its dataset's name.
    pub dataset: &'a str,
    /// Its index in the dataset.
    pub sample: u64,
    /// The dataset epoch it was drawn in.
    pub epoch: u64,
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `error` about the file at `path`.
fn at(path: &Path, error: Error) -> Error {
    match error {
        Error::History { reason, .. } => Error::History {
            path: path.to_path_buf(),
            reason,
        },
        other => other,
    }
}

/// The directory of `table`'s parts.
fn table_dir(dir: &Path, table: &TableDef) -> PathBuf {
    dir.join(table.name)
}

/// The merged file of `table`.
pub(crate) fn merged_path(dir: &Path, table: &str) -> PathBuf {
    dir.join(format!("{table}.parquet"))
}

/// A part file's name: `rRRRRR-SSSSSSSS-sFIRST-LAST.parquet`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PartName {
    rank: usize,
    seq: u64,
    /// The steps of its rows lie in `first..=last`.
    first: u64,
    last: u64,
}

impl PartName {
    fn file(&self) -> String {
        format!(
            "r{:05}-{:08}-s{}-{}.parquet",
            self.rank, self.seq, self.first, self.last
        )
    }

    fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_prefix('r')?.strip_suffix(".parquet")?;
        let mut it = rest.splitn(3, '-');
        let rank = it.next()?.parse().ok()?;
        let seq = it.next()?.parse().ok()?;
        let (first, last) = it.next()?.strip_prefix('s')?.split_once('-')?;
        Some(PartName {
            rank,
            seq,
            first: first.parse().ok()?,
            last: last.parse().ok()?,
        })
    }
}

/// `table`'s parts in `dir`, by rank and sequence number (temporary files of unfinished writes
/// are not parts).
fn list_parts(dir: &Path, table: &TableDef) -> Result<Vec<(PartName, PathBuf)>> {
    let tdir = table_dir(dir, table);
    let entries = match std::fs::read_dir(&tdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&tdir, "list", e)),
    };
    let mut parts = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&tdir, "list", e))?;
        let name = entry.file_name();
        if let Some(part) = name.to_str().and_then(PartName::parse) {
            parts.push((part, entry.path()));
        }
    }
    parts.sort();
    Ok(parts)
}

/// Removes the rows of steps after `last_step` from the part at `path`.
fn truncate_part(
    table: &'static TableDef,
    path: &Path,
    name: &PartName,
    last_step: Option<u64>,
) -> Result<()> {
    let keep = |step: u64| last_step.is_some_and(|l| step <= l);
    if keep(name.last) {
        return Ok(());
    }
    if !keep(name.first) {
        return std::fs::remove_file(path).map_err(|e| Error::io(path, "remove", e));
    }
    // Straddles the step: rewrite it in place with the earlier rows only (its name still
    // bounds its steps).
    let mut out = AtomicFile::create(path)?;
    let mut w = TableWriter::new(table, &mut out)?;
    table::read_groups(table, path, |rows| {
        let kept = rows.filter(|r, i| keep(r.i64(STEP, i) as u64));
        if kept.is_empty() {
            Ok(())
        } else {
            w.write(&kept)
        }
    })?;
    w.finish().map_err(|e| at(path, e))?;
    out.commit()
}

/// What [`compact`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Compacted {
    /// Parts merged into `steps.parquet`.
    pub steps_parts: usize,
    /// Rows in `steps.parquet`.
    pub steps_rows: u64,
    /// Parts merged into `samples.parquet`.
    pub samples_parts: usize,
    /// Rows in `samples.parquet`.
    pub samples_rows: u64,
}

/// Merges every rank's parts of each table in `dir` into one file per table
/// (`DIR/steps.parquet`, `DIR/samples.parquet`), a row group per part, atomically; the parts
/// stay. Memory holds one part at a time.
///
/// # Errors
///
/// [`Error::Io`]; [`Error::History`] naming a part that cannot be read.
pub fn compact(dir: &Path) -> Result<Compacted> {
    check_history(dir, HistoryFiles::Parts)?;
    // Two compactions at once (two ranks calling `finish`, a user running `history compact`
    // beside the run) take turns, so that neither's temporary file meets the other's commit.
    let _lock = CompactLock::acquire(dir)?;
    let mut out = Compacted::default();
    for table in [&STEPS, &SAMPLES] {
        let dest = merged_path(dir, table.name);
        let mut file = AtomicFile::create(&dest)?;
        let mut w = TableWriter::new(table, &mut file)?;
        let mut rows = 0;
        let parts = for_each_part_group(dir, table, |group| {
            rows += group.len() as u64;
            w.write(group)
        })?;
        w.finish().map_err(|e| at(&dest, e))?;
        file.commit()?;
        if table.name == STEPS.name {
            (out.steps_parts, out.steps_rows) = (parts, rows);
        } else {
            (out.samples_parts, out.samples_rows) = (parts, rows);
        }
    }
    Ok(out)
}

/// The lock file that serializes [`compact`]s of one history.
pub const COMPACT_LOCK: &str = ".compact.lock";

/// How long [`compact`] waits for another compaction of the same history to finish.
pub const COMPACT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// An exclusive lock on `DIR/.compact.lock`, released when dropped (or when the process dies).
struct CompactLock {
    _file: std::fs::File,
}

impl CompactLock {
    fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(COMPACT_LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, "create", e))?;
        let start = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(CompactLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < COMPACT_WAIT => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::History {
                        path: dir.to_path_buf(),
                        reason: format!(
                            "another compaction has held {} for {} s; wait for it to finish \
                             or stop it",
                            path.display(),
                            COMPACT_WAIT.as_secs()
                        ),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, "lock", e)),
            }
        }
    }
}

/// How many times in a row a part may vanish between listing and opening before reading gives
/// up: a part disappears only when a resumed writer drops it, so one fresh listing normally
/// suffices.
const RELISTS: usize = 64;

/// Calls `each` with every row group of every part of `table` in `dir`, by rank and sequence
/// number; returns the number of parts read. A part that vanishes between the listing and its
/// opening (a resumed run dropped it, or replaced it under a new name) is looked up again in a
/// fresh listing; a part opened stays readable whatever happens to its name.
fn for_each_part_group(
    dir: &Path,
    table: &'static TableDef,
    mut each: impl FnMut(&Rows) -> Result<()>,
) -> Result<usize> {
    let mut parts = list_parts(dir, table)?;
    let mut read = std::collections::HashSet::new();
    let (mut i, mut misses) = (0, 0);
    while let Some((name, path)) = parts.get(i) {
        if read.contains(&(name.rank, name.seq)) {
            i += 1;
            continue;
        }
        match std::fs::File::open(path) {
            Ok(file) => {
                table::read_file_groups(table, path, file, |rows| each(&rows))
                    .map_err(|e| at(path, e))?;
                read.insert((name.rank, name.seq));
                (i, misses) = (i + 1, 0);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && misses < RELISTS => {
                misses += 1;
                parts = list_parts(dir, table)?;
                i = 0;
            }
            Err(e) => return Err(Error::io(path, "open", e)),
        }
    }
    Ok(read.len())
}

/// Checks that `dir` holds a history to read from `source`: for parts, a `steps/` or
/// `samples/` directory; for the merged files, `steps.parquet` or `samples.parquet`.
///
/// # Errors
///
/// [`Error::History`] naming `dir`, saying what it expected and, where it can tell, where the
/// history is (the parent of a table directory, a subdirectory, the merged files).
pub(crate) fn check_history(dir: &Path, source: HistoryFiles) -> Result<()> {
    let has_parts = |d: &Path| [&STEPS, &SAMPLES].iter().any(|t| table_dir(d, t).is_dir());
    let has_merged = |d: &Path| {
        [&STEPS, &SAMPLES]
            .iter()
            .any(|t| merged_path(d, t.name).is_file())
    };
    let reason = match source {
        HistoryFiles::Parts if has_parts(dir) => return Ok(()),
        HistoryFiles::Merged if has_merged(dir) => return Ok(()),
        HistoryFiles::Parts => {
            let mut r = "not a metrics history: it holds no steps/ or samples/ directory of part \
                         files"
                .to_string();
            if has_merged(dir) {
                r.push_str("; it holds merged files only: read them with --merged");
            }
            r
        }
        HistoryFiles::Merged => {
            let mut r = "holds no merged history (steps.parquet, samples.parquet)".to_string();
            if has_parts(dir) {
                r.push_str(&format!(
                    "; merge its parts with `shardflow history compact {}` or read them without \
                     --merged",
                    dir.display()
                ));
            }
            r
        }
    };
    let table_of = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| [STEPS.name, SAMPLES.name].contains(n));
    let parent = dir.parent().filter(|p| has_parts(p));
    let hint = match (table_of, parent) {
        (Some(table), Some(parent)) => format!(
            "; it is the {table} table of the history {}: give that directory",
            parent.display()
        ),
        _ => {
            let inside = histories_inside(dir, has_parts);
            if inside.is_empty() {
                String::new()
            } else {
                format!("; histories inside it: {}", inside.join(", "))
            }
        }
    };
    Err(Error::History {
        path: dir.to_path_buf(),
        reason: reason + &hint,
    })
}

/// The first few subdirectories of `dir` that hold a history (a look at no more than a few
/// hundred entries, so that `/` or a large directory costs little).
fn histories_inside(dir: &Path, is_history: impl Fn(&Path) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<String> = entries
        .take(512)
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && is_history(p))
        .map(|p| p.display().to_string())
        .collect();
    found.sort();
    found.truncate(4);
    found
}

/// Where rows are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryFiles {
    /// Every rank's part files.
    Parts,
    /// The merged files [`compact`] wrote.
    Merged,
}

/// Calls `each` with every row group of `table` in `dir`, from `source`.
///
/// # Errors
///
/// As [`check_history`]; [`Error::History`] naming a file that cannot be read as its table.
fn for_each_group(
    dir: &Path,
    table: &'static TableDef,
    source: HistoryFiles,
    mut each: impl FnMut(&Rows) -> Result<()>,
) -> Result<()> {
    check_history(dir, source)?;
    match source {
        HistoryFiles::Parts => for_each_part_group(dir, table, each).map(drop),
        HistoryFiles::Merged => {
            let path = merged_path(dir, table.name);
            table::read_groups(table, &path, |rows| each(&rows)).map_err(|e| at(&path, e))
        }
    }
}

/// Every `steps` row in `dir` (for tests and small runs: the whole table in memory).
///
/// # Errors
///
/// As [`compact`].
pub fn read_steps(dir: &Path, source: HistoryFiles) -> Result<Vec<StepRow>> {
    let mut out = Vec::new();
    for_each_group(dir, &STEPS, source, |rows| {
        out.extend((0..rows.len()).map(|i| StepRow::from_rows(rows, i)));
        Ok(())
    })?;
    Ok(out)
}

/// Every `samples` row in `dir` (for tests and small runs: the whole table in memory).
///
/// # Errors
///
/// As [`compact`]; [`Error::History`] for an unknown status.
pub fn read_samples(dir: &Path, source: HistoryFiles) -> Result<Vec<SampleRow>> {
    let mut out = Vec::new();
    for_each_group(dir, &SAMPLES, source, |rows| {
        for i in 0..rows.len() {
            out.push(SampleRow::from_rows(rows, i)?);
        }
        Ok(())
    })?;
    Ok(out)
}
