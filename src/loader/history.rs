//! The loader's link to a metrics history (feature `history`): every `every` steps the data
//! metrics go to the history, reduced over the ranks when a collective is given (rank 0 writes
//! them as `all`), this rank's own otherwise; samples the skip policy skipped go to the samples
//! table with status `skipped`. A checkpoint flushes the history and records its last step, and
//! a resumed loader continues the same history without writing a step twice.

use std::path::PathBuf;
use std::sync::Arc;

use super::LoaderState;
use super::collator::Skip;
use crate::collective::Collective;
use crate::error::{Error, Result};
use crate::history::{HistoryConfig, HistoryWriter, SampleOf, SampleStatus};
use crate::metrics::Aggregator;

/// How a loader writes its metrics history.
#[derive(Clone)]
pub struct HistoryOptions {
    /// The run's directory.
    pub dir: PathBuf,
    /// Steps between metric reports.
    pub every: u64,
    /// The run's name; the directory's name when `None`.
    pub run: Option<String>,
    /// Rows buffered per table before a part is written.
    pub max_rows: usize,
    /// Reduces the metrics over the ranks before rank 0 writes them.
    pub collective: Option<Arc<dyn Collective>>,
}

impl std::fmt::Debug for HistoryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryOptions")
            .field("dir", &self.dir)
            .field("every", &self.every)
            .field("run", &self.run)
            .field("max_rows", &self.max_rows)
            .field("reduced", &self.collective.is_some())
            .finish()
    }
}

impl HistoryOptions {
    /// A history in `dir` with metrics every `every` steps.
    pub fn new(dir: impl Into<PathBuf>, every: u64) -> Self {
        HistoryOptions {
            dir: dir.into(),
            every,
            run: None,
            max_rows: HistoryConfig::DEFAULT_MAX_ROWS,
            collective: None,
        }
    }

    /// Names the run.
    pub fn run(mut self, run: impl Into<String>) -> Self {
        self.run = Some(run.into());
        self
    }

    /// Reduces the metrics over `collective`'s ranks; rank 0 writes them.
    pub fn reduced_over(mut self, collective: Arc<dyn Collective>) -> Self {
        self.collective = Some(collective);
        self
    }
}

/// A loader's open history.
pub(crate) struct HistoryLink {
    pub writer: HistoryWriter,
    every: u64,
    rank: usize,
    collective: Option<Arc<dyn Collective>>,
}

impl HistoryLink {
    /// Opens the history for `rank`: a new one, or the one a resumed `state` wrote.
    pub fn open(options: HistoryOptions, rank: usize, state: Option<&LoaderState>) -> Result<Self> {
        if options.every == 0 {
            return Err(Error::Config(
                "history: metrics every 0 steps; use at least 1".into(),
            ));
        }
        let run = options.run.clone().unwrap_or_else(|| {
            options
                .dir
                .file_name()
                .map_or_else(|| "run".into(), |n| n.to_string_lossy().into_owned())
        });
        let config = HistoryConfig {
            dir: options.dir,
            run,
            rank,
            max_rows: options.max_rows,
        };
        let writer = match state.and_then(|s| s.history_step.map(|h| (s, h))) {
            Some((_, step)) => HistoryWriter::resume(config, Some(step))?,
            None => HistoryWriter::create(config)?,
        };
        Ok(HistoryLink {
            writer,
            every: options.every,
            rank,
            collective: options.collective,
        })
    }

    /// After batch `step` (1-based) was delivered: its skipped samples, and the metrics when
    /// `step` is a reporting step.
    pub fn after_batch(
        &mut self,
        step: u64,
        skips: &[Skip],
        names: &[String],
        metrics: &mut Aggregator,
    ) -> Result<()> {
        for skip in skips {
            let of = SampleOf {
                dataset: &names[skip.dataset as usize],
                sample: skip.sample,
                epoch: skip.epoch,
            };
            self.writer
                .record_sample(step, &of, "skip", None, SampleStatus::Skipped)?;
        }
        if !step.is_multiple_of(self.every) {
            return Ok(());
        }
        match &self.collective {
            Some(c) => {
                let reduced = metrics.reduce(&**c)?;
                if self.rank == 0 {
                    self.writer.record_report(step, None, &reduced.report())?;
                }
            }
            None => {
                self.writer
                    .record_report(step, Some(self.rank), &metrics.report())?;
            }
        }
        Ok(())
    }

    /// Flushes the history for a checkpoint; the last step it holds on disk.
    pub fn checkpoint(&mut self) -> Option<u64> {
        if let Err(e) = self.writer.flush() {
            tracing::warn!("history: a checkpoint could not flush: {e}");
        }
        self.writer.durable_step()
    }
}
