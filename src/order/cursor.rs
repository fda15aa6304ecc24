//! The cursor: the small state a checkpoint stores, and resuming a plan from it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::mixture::{MixState, MixtureMode};
use super::partition::Partition;
use super::plan::{Plan, Planner};
use super::shuffle::Shuffle;
use crate::error::{Error, Result};

/// Where a stream stands: the next step, its stream position, per-dataset consumed counts (keyed
/// by dataset name), and the configuration facts a resume must agree with.
///
/// It serializes with serde; a checkpoint of any length of training is a few hundred bytes.
/// The loader's checkpoint ([`crate::loader::LoaderState`]) wraps it with the packing remainder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    /// The next global batch to plan.
    pub step: u64,
    /// The stream position of that batch's first row.
    pub position: u64,
    /// The position from which the current mixture weights hold.
    pub mixture_origin: u64,
    /// Per-dataset state, by name.
    pub datasets: BTreeMap<String, DatasetCursor>,
    /// The plan's seed.
    pub seed: u64,
    /// The plan's shuffle.
    pub shuffle: Shuffle,
    /// The plan's mixture mode.
    pub mixture: MixtureMode,
    /// The plan's partition.
    pub partition: Partition,
    /// Rows of a global batch.
    pub global_batch: u64,
    /// World size when the cursor was taken.
    pub world: usize,
}

/// One dataset's state in a [`Cursor`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetCursor {
    /// Samples drawn so far, over all epochs: epoch `consumed / len`, offset `consumed % len`.
    pub consumed: u64,
    /// `consumed` at the mixture origin.
    pub consumed_at_origin: u64,
    /// The dataset's size (a resume with another size would change its order).
    pub len: u64,
    /// The normalized weight.
    pub weight: f64,
}

/// What a resume may change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumeOptions {
    /// Allow datasets to be added (they start at consumed 0) or removed (their state is
    /// dropped). Off by default: a changed dataset list is usually a mistake.
    pub allow_dataset_changes: bool,
}

impl Planner {
    /// A planner that continues the stream `cursor` was taken from.
    ///
    /// Changed weights take effect from the cursor's position on. The world size may change in
    /// the global partition if the global batch size stays the same.
    ///
    /// # Errors
    ///
    /// [`Error::Resume`] saying why the stream cannot continue: another seed, shuffle, mixture
    /// mode or partition; another global batch size; another world size in an ownership
    /// partition; a dataset whose size changed; datasets added or removed without
    /// [`ResumeOptions::allow_dataset_changes`]; a cursor whose counts do not add up.
    pub fn resume(plan: Arc<Plan>, cursor: &Cursor, options: ResumeOptions) -> Result<Self> {
        let c = plan.config();
        let differs = |what: &str, was: String, now: String| {
            Error::Resume(format!(
                "the {what} was {was} when the cursor was taken and is {now} now; the stream \
                 would change"
            ))
        };
        if cursor.seed != c.seed {
            return Err(differs("seed", cursor.seed.to_string(), c.seed.to_string()));
        }
        if cursor.shuffle != c.shuffle {
            return Err(differs(
                "shuffle",
                cursor.shuffle.to_string(),
                c.shuffle.to_string(),
            ));
        }
        if cursor.mixture != c.mixture {
            let name = |m: MixtureMode| format!("{m:?}").to_lowercase();
            return Err(differs(
                "mixture mode",
                name(cursor.mixture),
                name(c.mixture),
            ));
        }
        if cursor.partition != c.partition {
            return Err(differs(
                "partition",
                cursor.partition.to_string(),
                c.partition.to_string(),
            ));
        }
        if cursor.global_batch != plan.global_batch() {
            return Err(Error::Resume(format!(
                "the global batch size (world x local batch) was {} and is {} now; the global \
                 stream continues only with the same global batch size",
                cursor.global_batch,
                plan.global_batch()
            )));
        }
        if c.partition != Partition::Global && cursor.world != c.world {
            return Err(Error::Resume(format!(
                "the {} partition gives each rank fixed samples, so the world size cannot change \
                 (was {}, is {}); use the global partition for elastic resume",
                c.partition, cursor.world, c.world
            )));
        }
        let names = plan.names();
        let added: Vec<&str> = names
            .iter()
            .filter(|n| !cursor.datasets.contains_key(*n))
            .map(String::as_str)
            .collect();
        let removed: Vec<&str> = cursor
            .datasets
            .keys()
            .filter(|n| !names.contains(n))
            .map(String::as_str)
            .collect();
        let changed_set = !added.is_empty() || !removed.is_empty();
        if changed_set && !options.allow_dataset_changes {
            return Err(Error::Resume(format!(
                "the datasets changed (added: [{}], removed: [{}]); resume with \
                 allow_dataset_changes to continue anyway",
                added.join(", "),
                removed.join(", ")
            )));
        }
        let mut mix = MixState::new(names.len());
        let mut reweighted = changed_set;
        for (d, name) in names.iter().enumerate() {
            let Some(dc) = cursor.datasets.get(name) else {
                continue;
            };
            if dc.len != plan.lens()[d] {
                return Err(Error::Resume(format!(
                    "dataset {name} held {} samples when the cursor was taken and holds {} now; \
                     its order would change",
                    dc.len,
                    plan.lens()[d]
                )));
            }
            mix.counts[d] = dc.consumed;
            mix.at_origin[d] = dc.consumed_at_origin;
            reweighted |= dc.weight != plan.weights()[d];
        }
        if !changed_set {
            let consumed: u64 = cursor.datasets.values().map(|d| d.consumed).sum();
            if consumed != cursor.position {
                return Err(Error::Resume(format!(
                    "the cursor is inconsistent: its consumed counts add up to {consumed} but \
                     its position is {}",
                    cursor.position
                )));
            }
        }
        if reweighted {
            // New weights hold from here on; the past is not repaid.
            mix.origin = cursor.position;
            mix.at_origin.clone_from(&mix.counts);
        } else {
            mix.origin = cursor.mixture_origin;
        }
        Ok(Planner::at(plan, cursor.step, cursor.position, mix))
    }
}
