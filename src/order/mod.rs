//! The sample order: which sample every row of every global batch holds, as a pure function of
//! the configuration, the seed and the position.
//!
//! - [`Shuffle`]: none, full (a keyed Feistel bijection per dataset and epoch, O(1) memory), or
//!   block (blocks shuffled, then samples within each block, so reads stay local).
//! - Epochs per dataset: a dataset that has given `c` samples is at epoch `c / N`, offset `c % N`;
//!   it starts its next epoch by itself, with a fresh permutation.
//! - [`MixtureMode`]: weights quantized to multiples of 2^-20, then the deterministic
//!   earliest-deadline interleave (each dataset within one sample of its share of every prefix)
//!   or a seeded, stratified random one. Both repeat their counts every 2^20 rows, so the state
//!   at any position is computed from at most one period ([`mixture`]).
//! - [`Partition`]: every rank takes rows `r*B .. (r+1)*B` of the global batch of `W*B` rows
//!   (global, elastic), or owns a fixed subset (contiguous, strided, hashed, each rank's share
//!   computed in O(1); range, from the ranges the user gives; stratified, each class in its
//!   global proportion). The strategies are compared in [`Partition`]'s module table.
//! - [`Cursor`]: a step, a position and per-dataset consumed counts. [`Planner::resume`]
//!   continues from it, checking it first, also with another world size when the global batch
//!   size is unchanged, and with new weights from the cursor on.
//!
//! # A plan you can check by hand
//!
//! Datasets `a` (4 samples, weight 3) and `b` (2 samples, weight 1), no shuffle, world 2, local
//! batch 2, so a global batch holds 4 rows. The deterministic mixture gives position i to the
//! due dataset (`w_d * (i+1) >= count_d`) with the earliest deadline `(count_d + 1) / w_d`, ties
//! to the larger deficit: `a a b a | a a b a | a a b a`.
//! Without shuffle each dataset's samples come in order, epoch after epoch. Rows are written
//! `dataset:sample (epoch)`:
//!
//! | step | rank 0 | rank 1 |
//! |---|---|---|
//! | 0 | a:0 (0), a:1 (0) | b:0 (0), a:2 (0) |
//! | 1 | a:3 (0), a:0 (1) | b:1 (0), a:1 (1) |
//! | 2 | a:2 (1), a:3 (1) | b:0 (1), a:0 (2) |
//!
//! The test `order::tiny_plan_table` asserts this table, and `shardflow plan` prints it:
//! `shardflow plan --data a=4:3 --data b=2:1 --shuffle none --world 2 --local-batch 2 --steps 3`.
//!
//! ```
//! # fn main() -> shardflow::Result<()> {
//! use std::sync::Arc;
//! use shardflow::order::{DatasetSpec, OrderConfig, Planner, Shuffle};
//!
//! let plan = OrderConfig { shuffle: Shuffle::None, world: 2, local_batch: 2, ..Default::default() }
//!     .init(vec![DatasetSpec::new("a", 4, 3.0), DatasetSpec::new("b", 2, 1.0)])?;
//! let mut planner = Planner::new(Arc::new(plan));
//! let mut rows = Vec::new();
//! planner.next_global(&mut rows);
//! let got: Vec<(u32, u32, u64)> = rows.iter().map(|r| (r.rank, r.dataset, r.sample)).collect();
//! assert_eq!(got, [(0, 0, 0), (0, 0, 1), (1, 1, 0), (1, 0, 2)]);
//! # Ok(()) }
//! ```

mod cursor;
pub mod mixture;
mod partition;
mod plan;
mod shuffle;

/// The range partition file, read by [`crate::shard`]; here for the partition that uses it.
pub use crate::shard::RangeFile;
pub use cursor::*;
pub use mixture::{MixtureMode, RESOLUTION};
pub use partition::{Classes, Owners, Partition, RankRanges};
pub use plan::*;
pub use shuffle::{EpochOrder, Permutation, Shuffle};
