//! Burn integration (feature `burn`): batches as Burn tensors, Burn's `DataLoader` over a
//! shardflow stream, and training metrics per dataset.
//!
//! - [`BurnSink`]: a [`crate::device::DeviceSink`] that lands each batch as `Int` tensors
//!   ([`BurnBatch`]) on any `burn::tensor::Device`, in the device's own int dtype (i32 on CubeCL
//!   devices and Flex, i64 on NdArray).
//! - [`BurnLoader`]: `burn::data::dataloader::DataLoader<O>` over a [`crate::loader::LoaderConfig`],
//!   generic over the user's conversion from a [`BurnBatch`] to a training step's input.
//! - [`record_losses`]: a step's per-sample losses recorded per dataset, beside the data
//!   metrics and reduced with them.
//!
//! This module sits on top of everything: nothing else in the crate imports it.
//!
//! # Example
//!
//! ```
//! # fn main() -> shardflow::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # shardflow::shard::synthetic::SyntheticCorpus::single("web", 20_000, 50.0, 1)
//! #     .write(dir.path(), |_| {})?;
//! use burn::data::dataloader::DataLoader;
//! use burn::tensor::Device;
//! use shardflow::burn::BurnLoader;
//! use shardflow::loader::{DatasetConfig, LoaderConfig};
//!
//! let config = LoaderConfig::new(vec![DatasetConfig::new(dir.path())])
//!     .with_batch_size(8)
//!     .with_epochs(1.0);
//! let device = Device::flex();
//! // The training step's input here is the ids tensor alone.
//! let loader = BurnLoader::new(config, 0, 1, &device, |batch| batch.ids)?;
//! let mut seen = 0;
//! for ids in loader.iter() {
//!     let ids = ids.expect("a batch");
//!     seen += ids.dims()[0];
//! }
//! assert_eq!(seen, loader.num_items());
//! # Ok(()) }
//! ```

mod dataloader;
mod loss;
mod sink;
#[cfg(feature = "wgpu")]
mod wgpu;

pub use dataloader::*;
pub use loss::*;
pub use sink::*;
#[cfg(feature = "wgpu")]
pub use wgpu::{BurnShaderSink, record_losses_wgpu, shared_wgpu};
