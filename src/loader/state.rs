//! The loader's checkpoint state and its statistics.

use std::path::Path;
use std::time::Duration;

use crate::atomic::write_atomic;
use crate::collate::{CollateConfig, PoolStats};
use crate::error::{Error, Result};
use crate::metrics::AggregatorState;
use crate::order::Cursor;
use crate::transform::TransformConfig;

pub use super::job::Position;

/// Skips counted for one dataset epoch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkipCount {
    /// The dataset.
    pub dataset: String,
    /// Its epoch.
    pub epoch: u64,
    /// Samples skipped in it.
    pub skipped: u64,
}

/// Whose totals a [`LoaderState`]'s metrics and skip counts are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// This rank's own ([`crate::loader::Loader::state`]): a resume must use the same rank and
    /// world size while metrics are on.
    #[default]
    Rank,
    /// The whole world's, reduced over the ranks ([`crate::loader::Loader::checkpoint`]): a resume
    /// with any world size restores them on rank 0, so the reduced totals continue.
    World,
}

/// Exactly the batches the caller has received: a new loader built with `.resume(state)`
/// continues with the next one. Serializes with serde (JSON checkpoints are a few hundred bytes).
///
/// A state read from a file is untrusted input: [`LoaderState::load`] checks that it is
/// consistent in itself, and the builder checks it against the plan it resumes; either names the
/// field that is wrong in an [`Error::Checkpoint`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoaderState {
    /// Format version of this state.
    pub version: u32,
    /// The plan's cursor at [`Position::plan_step`].
    pub cursor: Cursor,
    /// Batches delivered and, when packing, the remainder.
    pub position: Position,
    /// The rank that took the state (packed streams are per rank).
    pub rank: usize,
    /// The collate configuration the stream was made with.
    pub collate: CollateConfig,
    /// The transform configuration the stream was made with.
    pub transform: TransformConfig,
    /// Skips per dataset epoch, for the skip limit.
    pub skips: Vec<SkipCount>,
    /// The metric aggregator's state, when metrics are on.
    #[serde(default)]
    pub metrics: Option<AggregatorState>,
    /// Whose totals `metrics` and `skips` hold.
    #[serde(default)]
    pub scope: Scope,
    /// The last step a metrics history holds on disk, when the training loop writes one: the
    /// loader leaves it `None`, `crate::history::Recorder::checkpoint` gives the value, and a
    /// resumed recorder (`Recorder::resume`) removes the history's rows of later steps, so none
    /// is written twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_step: Option<u64>,
}

impl LoaderState {
    /// The current format version. Version 2 changed the deterministic mixture to exact integer
    /// arithmetic over weights quantized to 2^-20 and the hashed partition to a keyed
    /// permutation, so version 1 states would not continue their streams.
    pub const VERSION: u32 = 2;

    /// Writes the state as JSON to `path` atomically (temporary name, fsync, rename).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("loader state serializes");
        write_atomic(path, &json)
    }

    /// Reads a state written by [`LoaderState::save`] and checks it ([`LoaderState::check`]).
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`], [`Error::Io`], or [`Error::Checkpoint`] naming the file and the
    /// field for a file that is not a consistent checkpoint of this version.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        Self::from_json(&bytes).map_err(|e| match e {
            Error::Checkpoint { field, reason, .. } => Error::Checkpoint {
                path: Some(path.to_path_buf()),
                field,
                reason,
            },
            e => e,
        })
    }

    /// Parses a state from JSON and checks it ([`LoaderState::check`]).
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let state: LoaderState =
            serde_json::from_slice(bytes).map_err(|e| Error::checkpoint("json", e.to_string()))?;
        state.check()?;
        Ok(state)
    }

    /// Checks that the state is consistent in itself: the version, the cursor's counts (each at
    /// least its count at the mixture origin, adding up to the position), the position against
    /// the step, the padding fields, the rank, and the metric state
    /// ([`AggregatorState::check`]). The builder checks the rest against the plan.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the field.
    pub fn check(&self) -> Result<()> {
        if self.version != Self::VERSION {
            return Err(Error::checkpoint(
                "version",
                format!(
                    "version {} (this shardflow reads {}; version 2 changed the mixture and \
                     hashed-partition orders)",
                    self.version,
                    Self::VERSION
                ),
            ));
        }
        self.cursor.check()?;
        let c = &self.cursor;
        let p = &self.position;
        if self.rank >= c.world {
            return Err(Error::checkpoint(
                "rank",
                format!("rank {} is outside world size {}", self.rank, c.world),
            ));
        }
        // Far beyond any real stream, and it keeps every `+ 1` on the counters from overflowing.
        if p.batches >= 1 << 62 {
            return Err(Error::checkpoint(
                "position.batches",
                format!("{} batches cannot have been delivered", p.batches),
            ));
        }
        if p.plan_step != c.step {
            return Err(Error::checkpoint(
                "position.plan_step",
                format!("{} but the cursor is at step {}", p.plan_step, c.step),
            ));
        }
        if !self.collate.pack
            && (p.batches != p.plan_step || p.rows_taken != 0 || p.doc_offset != 0)
        {
            return Err(Error::checkpoint(
                "position",
                format!(
                    "a padded stream delivers one batch per step with no remainder, but the \
                     position is {p:?}"
                ),
            ));
        }
        if let Some(m) = &self.metrics {
            m.check()?;
        }
        Ok(())
    }
}

/// What a loader has done so far.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LoaderStats {
    /// Batches delivered.
    pub batches: u64,
    /// Rows delivered (samples, or packed rows).
    pub rows: u64,
    /// Real tokens delivered.
    pub real_tokens: u64,
    /// Tokens delivered including padding.
    pub padded_tokens: u64,
    /// Samples skipped by the bad-sample policy.
    pub skipped: u64,
    /// Time the caller spent in `next()` other than building batches: waiting for a worker,
    /// uploading to the device, accounting.
    pub wait: Duration,
    /// Time the caller's thread spent building batches in `next()` (all of them with 0
    /// workers; with workers, only the batch it was waiting for, and only when
    /// [`crate::loader::LoaderBuilder::with_caller_builds`] allows it).
    #[serde(default)]
    pub caller_build: Duration,
    /// Time workers spent building batches, summed over workers.
    pub worker_busy: Duration,
    /// Batches built and waiting for the caller, or being built.
    pub queue_depth: usize,
    /// The staging pool's counters.
    pub pool: PoolStats,
    /// Each worker thread's health (empty with 0 workers).
    pub workers: Vec<super::WorkerStats>,
}

impl LoaderStats {
    /// The counters since `earlier` (a snapshot of the same loader): counts and times
    /// subtracted; the queue depth, the pool's counters and the workers' statuses are the
    /// current ones.
    pub fn since(&self, earlier: &LoaderStats) -> LoaderStats {
        LoaderStats {
            batches: self.batches - earlier.batches,
            rows: self.rows - earlier.rows,
            real_tokens: self.real_tokens - earlier.real_tokens,
            padded_tokens: self.padded_tokens - earlier.padded_tokens,
            skipped: self.skipped - earlier.skipped,
            wait: self.wait.saturating_sub(earlier.wait),
            caller_build: self.caller_build.saturating_sub(earlier.caller_build),
            worker_busy: self.worker_busy.saturating_sub(earlier.worker_busy),
            queue_depth: self.queue_depth,
            pool: self.pool,
            workers: self
                .workers
                .iter()
                .map(|w| {
                    let before = earlier.workers.iter().find(|e| e.index == w.index);
                    let mut w = w.clone();
                    if let Some(e) = before {
                        w.batches -= e.batches;
                        w.real_tokens -= e.real_tokens;
                        w.busy = w.busy.saturating_sub(e.busy);
                        w.tokens_per_s = w.real_tokens as f64 / w.busy.as_secs_f64().max(1e-9);
                    }
                    w
                })
                .collect(),
        }
    }
}
