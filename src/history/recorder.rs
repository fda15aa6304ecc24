//! The recorder a training loop calls after each batch: it writes the data metrics every
//! `every` steps and the samples a batch skipped, and flushes the history for a checkpoint.

use super::{Compacted, HistoryConfig, HistoryWriter, SampleOf, SampleStatus, compact};
use crate::collate::DocRef;
use crate::collective::Collective;
use crate::error::{Error, Result};
use crate::metrics::Aggregator;

/// Writes a loader's metrics history from the training loop: call [`Recorder::after_batch`]
/// after every batch with the loader's metrics and the samples that batch skipped, and
/// [`Recorder::checkpoint`] when the loader's state is saved.
///
/// Every `every` steps the data metrics go to the `steps` table: reduced over the ranks when
/// `after_batch` is given a collective (rank 0 writes them as `all`), this rank's own
/// otherwise. Samples the skip policy skipped go to the `samples` table with status `skipped`.
///
/// **Lockstep.** With a collective, every rank must call `after_batch` after the same batches:
/// on a reporting step it runs the metric reduce ([`Aggregator::reduce`]), a collective every
/// rank takes part in. Nothing else here talks to other ranks.
///
/// # Example
///
/// ```
/// # fn main() -> shardflow::Result<()> {
/// # let data = tempfile::tempdir().unwrap();
/// # shardflow::shard::synthetic::SyntheticCorpus::single("web", 2_000, 50.0, 1)
/// #     .write(data.path(), |_| {})?;
/// # let sources = vec![shardflow::loader::Source::open(data.path().join("web"), 1.0)?];
/// # let run = tempfile::tempdir().unwrap();
/// use shardflow::history::{HistoryConfig, Recorder};
/// use shardflow::loader::LoaderBuilder;
///
/// let mut loader = LoaderBuilder::<i32>::new(sources).build_host()?;
/// let config = HistoryConfig::new(run.path(), "my-run", 0);
/// let mut recorder = Recorder::create(config, 2, loader.plan().names())?;
/// for _ in 0..4 {
///     let _batch = loader.next().expect("a batch")?;
///     // One rank here: no collective, the rank's own metrics are written.
///     let last = loader.last_batch();
///     recorder.after_batch(last.step, last.skipped, last.metrics, None)?;
/// }
/// // A checkpoint: the loader's state, and the history's last step on disk.
/// let mut state = loader.state();
/// state.history_step = recorder.checkpoint()?;
/// assert_eq!(state.history_step, Some(4));
/// # Ok(()) }
/// ```
pub struct Recorder {
    writer: HistoryWriter,
    every: u64,
    names: Vec<String>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("writer", &self.writer)
            .field("every", &self.every)
            .field("datasets", &self.names)
            .finish()
    }
}

impl Recorder {
    /// A new history for `config.rank` in `config.dir`, with the data metrics every `every`
    /// steps; `names` are the loader's dataset names (`loader.plan().names()`), which skipped
    /// samples and per-sample values are recorded under.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `every` 0; as [`HistoryWriter::create`] (a directory that holds
    /// this rank's parts already is refused: resume from a checkpoint or use a new one).
    pub fn create(config: HistoryConfig, every: u64, names: &[String]) -> Result<Self> {
        check_every(every)?;
        Ok(Self::with(HistoryWriter::create(config)?, every, names))
    }

    /// Continues the history of a resumed run: `last_step` is the step its checkpoint recorded
    /// (`LoaderState::history_step`, from [`Recorder::checkpoint`]). This rank's rows of later
    /// steps are removed, so the resumed run writes no step twice.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `every` 0; as [`HistoryWriter::resume`].
    pub fn resume(
        config: HistoryConfig,
        every: u64,
        names: &[String],
        last_step: Option<u64>,
    ) -> Result<Self> {
        check_every(every)?;
        Ok(Self::with(
            HistoryWriter::resume(config, last_step)?,
            every,
            names,
        ))
    }

    fn with(writer: HistoryWriter, every: u64, names: &[String]) -> Self {
        Recorder {
            writer,
            every,
            names: names.to_vec(),
        }
    }

    /// After batch `step` (1-based: the loader's `step()` once the batch has
    /// arrived): records the samples it skipped (the loader's `skipped()`), and on every
    /// `every`-th step the metrics. With `collective` the metrics are reduced over the ranks
    /// first and rank 0 writes them as `all`; every rank must then call this after the same
    /// batches (see [`Recorder`]). Without one, this rank's own metrics are written.
    ///
    /// # Errors
    ///
    /// The collective's errors and [`Error::Metric`] from the reduce; [`Error::Io`] or
    /// [`Error::History`] when a full buffer's part cannot be written.
    pub fn after_batch(
        &mut self,
        step: u64,
        skipped: &[DocRef],
        metrics: &mut Aggregator,
        collective: Option<&dyn Collective>,
    ) -> Result<()> {
        for d in skipped {
            let of = SampleOf {
                dataset: self
                    .names
                    .get(d.dataset as usize)
                    .map_or("?", String::as_str),
                sample: d.sample,
                epoch: d.epoch,
            };
            self.writer
                .record_sample(step, &of, "skip", None, SampleStatus::Skipped)?;
        }
        if !step.is_multiple_of(self.every) {
            return Ok(());
        }
        match collective {
            Some(c) => {
                let reduced = metrics.reduce(c)?;
                if c.rank() == 0 {
                    self.writer.record_report(step, None, &reduced.report())?;
                }
            }
            None => {
                let rank = self.writer.config().rank;
                self.writer
                    .record_report(step, Some(rank), &metrics.report())?;
            }
        }
        Ok(())
    }

    /// Records `values[i]` (a loss, say) for the sample of `docs[i]` of the batch at `step`
    /// ([`HistoryWriter::record_batch_values`] with the recorder's dataset names).
    ///
    /// # Errors
    ///
    /// As [`HistoryWriter::record_batch_values`].
    pub fn record_values(
        &mut self,
        step: u64,
        docs: &[DocRef],
        name: &str,
        values: &[f64],
    ) -> Result<()> {
        self.writer
            .record_batch_values(step, docs, &self.names, name, values)
    }

    /// The writer, to record other rows directly.
    pub fn writer(&mut self) -> &mut HistoryWriter {
        &mut self.writer
    }

    /// Flushes the history for a checkpoint and returns its last step on disk: store it in the
    /// loader state's `history_step`, and pass it to [`Recorder::resume`] on resume.
    ///
    /// # Errors
    ///
    /// As [`HistoryWriter::flush`]; the checkpoint should then not be taken, or its state
    /// should keep the history's previous step ([`HistoryWriter::durable_step`]).
    pub fn checkpoint(&mut self) -> Result<Option<u64>> {
        self.writer.flush()?;
        Ok(self.writer.durable_step())
    }

    /// Flushes, then merges every rank's parts ([`HistoryWriter::finish`]; call it on one rank,
    /// after the others have flushed).
    ///
    /// # Errors
    ///
    /// As [`HistoryWriter::finish`].
    pub fn finish(mut self) -> Result<Compacted> {
        self.writer.flush()?;
        compact(&self.writer.config().dir)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // What the history buffered goes to disk.
        if let Err(e) = self.writer.flush() {
            tracing::warn!("history: rows of the last steps could not be written: {e}");
        }
    }
}

fn check_every(every: u64) -> Result<()> {
    if every == 0 {
        return Err(Error::Config(
            "history: metrics every 0 steps; use at least 1".into(),
        ));
    }
    Ok(())
}
