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

/// Exactly the batches the caller has received: a new loader built with `.resume(state)`
/// continues with the next one. Serializes with serde (JSON checkpoints are a few hundred bytes).
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
}

impl LoaderState {
    /// The current format version.
    pub const VERSION: u32 = 1;

    /// Writes the state as JSON to `path` atomically (temporary name, fsync, rename).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("loader state serializes");
        write_atomic(path, &json)
    }

    /// Reads a state written by [`LoaderState::save`].
    ///
    /// # Errors
    ///
    /// [`Error::MissingFile`], [`Error::Io`], or [`Error::Checkpoint`] for a file that is not a
    /// checkpoint of this version.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "read", e))?;
        let state: LoaderState = serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if state.version != Self::VERSION {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "version {} (this shardflow reads {})",
                    state.version,
                    Self::VERSION
                ),
            });
        }
        Ok(state)
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
    /// Time the caller spent waiting in `next()`.
    pub wait: Duration,
    /// Time workers spent building batches, summed over workers.
    pub worker_busy: Duration,
    /// Batches built and waiting for the caller, or being built.
    pub queue_depth: usize,
    /// The staging pool's counters.
    pub pool: PoolStats,
}
