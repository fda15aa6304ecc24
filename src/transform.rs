//! Per-sample transforms: truncation to a maximum length, BOS/EOS insertion, user transforms,
//! and the policy for samples that fail.
//!
//! A sample becomes `[BOS] + content + [EOS]`, where content is the stored sequence, truncated so
//! that the whole fits `max_len`. A sample that is dropped (by the truncation policy) or skipped
//! (by the bad-sample policy) leaves an empty row in its batch: length 0, all padding, every label
//! ignored. Batch shapes stay fixed and the order stays a pure function of the plan.

use std::sync::Arc;

use crate::error::{Error, Result};

/// What happens to a sample longer than the maximum length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TruncatePolicy {
    /// Keep the first tokens (counted in metrics as truncated).
    #[default]
    Truncate,
    /// Leave an empty row instead.
    Drop,
    /// Fail the sample; the bad-sample policy decides what follows.
    Error,
}

/// What happens when a sample fails (a decode error, a user transform's error, or the `Error`
/// truncation policy).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadSamplePolicy {
    /// Stop: the loader returns an error naming the dataset and the sample.
    #[default]
    Error,
    /// Leave an empty row and count it; fail once a dataset skips more than `max_per_epoch`
    /// samples in one of its epochs.
    Skip {
        /// Skips allowed per dataset and epoch.
        max_per_epoch: u64,
    },
}

/// The serializable part of the transform chain; a resumed loader must use the same.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TransformConfig {
    /// The longest sample after BOS/EOS; `None` uses the collate sequence length.
    pub max_len: Option<usize>,
    /// What to do with longer samples.
    pub truncate: TruncatePolicy,
    /// A token put before every sample.
    pub bos: Option<i64>,
    /// A token put after every sample (also the document separator when packing).
    pub eos: Option<i64>,
    /// What to do with samples that fail.
    pub bad_samples: BadSamplePolicy,
}

/// What a user transform knows about the sample it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleInfo<'a> {
    /// The dataset's name.
    pub dataset: &'a str,
    /// The sample's index in its dataset.
    pub sample: u64,
    /// The dataset epoch of this draw.
    pub epoch: u64,
}

/// A user transform: changes a sample's token ids in place (they may grow or shrink), or fails
/// with a message. It runs on loader worker threads, after BOS/EOS and truncation.
pub type UserTransform<T> =
    Arc<dyn Fn(&SampleInfo<'_>, &mut Vec<T>) -> Result<(), String> + Send + Sync>;

/// How one stored sequence of `raw` tokens becomes a sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `bos` + the first `content` stored tokens + `eos`; `truncated` when tokens were cut.
    Keep {
        /// Stored tokens kept.
        content: usize,
        /// Whether tokens were cut.
        truncated: bool,
    },
    /// The truncation policy dropped it.
    Dropped,
}

impl TransformConfig {
    /// Tokens added around every sample.
    pub fn extra(&self) -> usize {
        self.bos.is_some() as usize + self.eos.is_some() as usize
    }

    /// How a sequence of `raw` tokens is shaped under a cap of `max_len` tokens.
    ///
    /// # Errors
    ///
    /// With [`TruncatePolicy::Error`], [`Error::Sample`] for a sequence that does not fit (the
    /// caller fills in the dataset and sample).
    pub fn shape(&self, raw: usize, max_len: usize) -> Result<Shape, String> {
        let room = max_len.saturating_sub(self.extra());
        if raw <= room {
            return Ok(Shape::Keep {
                content: raw,
                truncated: false,
            });
        }
        match self.truncate {
            TruncatePolicy::Truncate => Ok(Shape::Keep {
                content: room,
                truncated: true,
            }),
            TruncatePolicy::Drop => Ok(Shape::Dropped),
            TruncatePolicy::Error => Err(format!(
                "{} tokens (with BOS/EOS: {}) exceed the maximum length {max_len}",
                raw,
                raw + self.extra()
            )),
        }
    }

    /// Checks that BOS, EOS and `pad` fit the output id type `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the token that does not fit.
    pub fn check_ids<T: crate::shard::TokenId>(&self, pad: i64) -> Result<()> {
        for (what, id) in [("bos", self.bos), ("eos", self.eos), ("pad", Some(pad))] {
            if let Some(id) = id {
                T::try_from(id).map_err(|_| {
                    Error::Config(format!(
                        "{what} id {id} does not fit the output type {}",
                        T::NAME
                    ))
                })?;
            }
        }
        Ok(())
    }
}
