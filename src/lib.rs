//! shardflow feeds training loops from memory-mapped token shards to device buffers: exact,
//! fast, and impossible to corrupt.
//!
//! The modules, in pipeline order (a module uses the ones above it, never one below):
//!
//! - [`error`]: the one [`Error`] type; every variant names the file, offset, dataset or rank.
//! - [`atomic`]: atomic file writes (temporary name, fsync, rename, directory fsync), shard
//!   pairs that never mix, and the cleanup of interrupted writes.
//! - [`shard`]: Megatron `.bin/.idx` shards (read, validate, write), flat token files,
//!   multi-shard datasets, host decoding of token ids, the class and range files that lie
//!   beside shards ([`shard::read_class_file`], [`shard::RangeFile`]), the built-in synthetic
//!   corpus.
//! - [`order`]: the deterministic sample order: shuffles, epochs, the mixture of datasets, rank
//!   partitions, and the [`order::Cursor`] a checkpoint stores. Pure: it reads no file.
//! - [`transform`]: per-sample truncation, BOS/EOS, user transforms, the bad-sample policy.
//! - [`collate`]: padding and packing into staged batches in pooled, aligned memory.
//! - [`gpu`]: GPU contexts: the wgpu context (adapter, device, queue, compiled shaders of
//!   `shaders/`; feature `wgpu`) and the CUDA context (streams, pinned memory, the kernels of
//!   `kernels/` compiled by NVRTC; feature `cuda`).
//! - [`device`]: the [`device::DeviceSink`] seam and its sinks: the host reference sink, the wgpu
//!   sink (feature `wgpu`) and the CUDA sink (feature `cuda`: pinned staging, async copies, padding
//!   on the device).
//! - [`collective`]: the [`collective::Collective`] trait and its engines: solo, the in-process
//!   world of threads, NCCL (feature `cuda`), engines served from a thread
//!   of their own ([`collective::Served`]); the [`collective::FileStore`] rendezvous for separate
//!   processes, the run spec and config agreement, [`collective::World::from_env`]. (MPI is the
//!   workspace crate `crates/shardflow-mpi`.)
//! - [`metrics`]: metric kinds, the aggregator, the distribution sketch, the fused reduce.
//! - `history` (feature `history`): per-step and per-sample records streamed to Parquet part
//!   files, and the summary reader.
//! - [`loader`]: the config and builder, planner, workers, reorder buffer, checkpoint state and
//!   statistics.
//! - `burn` (feature `burn`): batches as Burn tensors, Burn's `DataLoader` over a stream,
//!   training losses per dataset.
//! - `cli` (feature `cli`): the `shardflow` command.
//!
//! # Example
//!
//! Write a Megatron shard, open it, and decode a sequence into an `i32` buffer:
//!
//! ```
//! # fn main() -> shardflow::Result<()> {
//! use shardflow::{Dataset, IndexedWriter, Shard};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let prefix = dir.path().join("corpus");
//! let mut writer = IndexedWriter::create(&prefix, None)?; // dtype chosen: u16
//! writer.add_sequence(&[15496u32, 995, 50256])?;
//! writer.end_document()?;
//! writer.add_sequence(&[40u32, 588])?;
//! writer.add_sequence(&[340u32])?;
//! writer.end_document()?;
//! let summary = writer.finish()?;
//! assert_eq!((summary.sequences, summary.documents, summary.tokens), (3, 2, 6));
//!
//! let data = Dataset::open(&[&prefix])?;
//! let mut ids = vec![0i32; 8];
//! let n = data.get(0).unwrap().decode_into(&mut ids)?;
//! assert_eq!(&ids[..n], &[15496, 995, 50256]);
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! - `cli` (default): the `shardflow` command and what only it needs (clap, indicatif); turns on
//!   `history`. Library users can turn it off with `default-features = false`.
//! - `wgpu` (default): the wgpu context, device sink and sketch binning.
//! - `cuda`: the CUDA context, the CUDA sink, CUDA sketches, and the NCCL engine, through
//!   cudarc with dynamic loading: the CUDA C kernels of `kernels/` are compiled at run time by
//!   NVRTC, and libcuda, libnvrtc and libnccl are loaded when needed (no CUDA toolkit at
//!   build time).
//! - `history`: the metrics history in Parquet (the parquet crate, without arrow).
//! - `burn`: Burn tensors from batches, Burn's `DataLoader` over a shardflow stream, per-dataset
//!   training losses (Burn 0.22.1 with the Flex, NdArray and wgpu devices). Host-padded
//!   batches (`BurnSink`) need nothing more; the shader sink (`BurnShaderSink`), which pads on
//!   Burn's own wgpu device, needs `wgpu` too.
//! - `fault-injection`: for tests only; lets a test stop a shard write at any step.
//!
//! `libc` is a dependency with every feature set: shards drop their pages from the page cache
//! with it (`posix_fadvise`, for cold-cache measurements), and the command uses it for signals.
//!
//! The tests run with all of them.

#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod atomic;
#[cfg(feature = "burn")]
pub mod burn;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub mod collate;
pub mod collective;
pub mod device;
pub mod error;
pub mod gpu;
pub(crate) mod hash;
#[cfg(feature = "history")]
pub mod history;
#[cfg(feature = "ingest")]
pub mod ingest;
pub mod loader;
pub mod metrics;
pub mod order;
pub mod shard;
pub mod transform;

// What a user types every day, at the root: `shardflow::LoaderConfig`, `shardflow::Batch`.
pub use collate::Batch;
pub use error::{Error, Result};
pub use loader::{DatasetConfig, Loader, LoaderConfig, LoaderState};
pub use shard::{
    Dataset, Dtype, FlatShard, IndexedShard, IndexedWriter, LengthStats, Shard, ShardSummary,
    TokenId, TokenSlice,
};

/// The README's examples, compiled and run by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
