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
    /// The range or stratified partition's input digest ([`Plan::partition_digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_digest: Option<u64>,
    /// The plan's [`OrderConfig::drop_last`](super::OrderConfig::drop_last) (absent, false, in
    /// checkpoints taken before it existed).
    #[serde(default)]
    pub drop_last: bool,
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

impl Cursor {
    /// Checks that the cursor is consistent in itself: sizes and batch shape positive, the
    /// origin at or before the position, every count at least its count at the origin, the
    /// counts since the origin adding up to the rows since the origin, and the position inside
    /// its step. [`Planner::resume`] runs it; a cursor that passes cannot make the planner
    /// underflow or index out of bounds.
    ///
    /// # Errors
    ///
    /// [`Error::Checkpoint`] naming the field.
    pub fn check(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::checkpoint(format!("cursor.{field}"), why));
        if self.world == 0
            || self.global_batch == 0
            || !self.global_batch.is_multiple_of(self.world as u64)
        {
            return bad(
                "global_batch",
                format!(
                    "{} rows cannot be split evenly over world size {}",
                    self.global_batch, self.world
                ),
            );
        }
        if self.mixture_origin > self.position {
            return bad(
                "mixture_origin",
                format!(
                    "{} lies after the position {}",
                    self.mixture_origin, self.position
                ),
            );
        }
        let mut since_origin: u128 = 0;
        for (name, d) in &self.datasets {
            if d.len == 0 {
                return bad(
                    &format!("datasets.{name}.len"),
                    "a dataset holds samples".into(),
                );
            }
            if !(d.weight.is_finite() && d.weight > 0.0 && d.weight <= 1.0) {
                return bad(
                    &format!("datasets.{name}.weight"),
                    format!("{} is not a normalized weight", d.weight),
                );
            }
            if d.consumed_at_origin > d.consumed {
                return bad(
                    &format!("datasets.{name}.consumed_at_origin"),
                    format!("{} is above consumed {}", d.consumed_at_origin, d.consumed),
                );
            }
            since_origin += (d.consumed - d.consumed_at_origin) as u128;
        }
        let rows = (self.position - self.mixture_origin) as u128;
        if since_origin != rows {
            return bad(
                "datasets",
                format!(
                    "the counts since the mixture origin add up to {since_origin}, but {rows} \
                     rows lie between the origin and the position"
                ),
            );
        }
        let per_step = if self.partition == Partition::Global {
            self.global_batch
        } else {
            self.global_batch / self.world as u64
        } as u128;
        let (step, position) = (self.step as u128, self.position as u128);
        let inside = if step == 0 {
            position == 0
        } else {
            (step - 1) * per_step < position && position <= step * per_step
        };
        if !inside {
            return bad(
                "position",
                format!(
                    "{position} is not inside step {step} of {per_step} rows (rows {}..={})",
                    step.saturating_sub(1) * per_step + 1,
                    step * per_step
                ),
            );
        }
        Ok(())
    }
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
    /// [`Error::Checkpoint`] for a cursor that is inconsistent in itself ([`Cursor::check`]) or
    /// whose mixture counts are not the schedule's at its position;
    /// [`Error::Resume`] saying why the stream cannot continue: another seed, shuffle, mixture
    /// mode, partition or `drop_last`; another global batch size; another world size in an ownership
    /// partition; other ranges or classes in the range or stratified partition; a dataset whose size changed; datasets added or removed without
    /// [`ResumeOptions::allow_dataset_changes`]; a cursor whose counts do not add up.
    pub fn resume(plan: Arc<Plan>, cursor: &Cursor, options: ResumeOptions) -> Result<Self> {
        cursor.check()?;
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
        if cursor.drop_last != c.drop_last {
            return Err(differs(
                "drop_last setting",
                cursor.drop_last.to_string(),
                c.drop_last.to_string(),
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
        if cursor.partition_digest != plan.partition_digest() {
            let what = if c.partition == Partition::Range {
                "ranks' sample ranges"
            } else {
                "samples' classes"
            };
            return Err(Error::Resume(format!(
                "the {what} of the {} partition differ from those the cursor was taken with; \
                 each rank would own other samples",
                c.partition
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
            {
                // The counts are a function of the position: check them against the schedule.
                let mut expected = mix.clone();
                expected.jump(c.mixture, plan.shares(), c.seed, cursor.position);
                if expected.counts != mix.counts {
                    let (d, _) = (0..names.len())
                        .map(|d| (d, expected.counts[d] != mix.counts[d]))
                        .find(|x| x.1)
                        .expect("the counts differ somewhere");
                    return Err(Error::checkpoint(
                        format!("cursor.datasets.{}.consumed", names[d]),
                        format!(
                            "{} but the mixture schedule gives {} at position {}",
                            mix.counts[d], expected.counts[d], cursor.position
                        ),
                    ));
                }
            }
        }
        Ok(Planner::at(plan, cursor.step, cursor.position, mix))
    }
}
