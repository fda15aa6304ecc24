//! Device sinks: where a staged batch leaves the host pipeline.
//!
//! A [`DeviceSink`] has two halves. [`DeviceSink::prepare`] runs on the loader's worker threads,
//! in parallel, and does the host-side work (the host sink pads there). [`DeviceSink::upload`]
//! runs on the caller's thread, in plan order, and does what must be sequential (a device queue).
//! Every sink must produce exactly what [`HostSink`] produces.

use crate::collate::{Batch, CollateConfig, Pool, StagedBatch, pad_host};
use crate::error::Result;
use crate::shard::TokenId;

/// Where staged batches go: host memory, a wgpu buffer, a CUDA buffer, a Burn tensor.
pub trait DeviceSink<T: TokenId>: Send + Sync + 'static {
    /// What `prepare` hands to `upload`.
    type Prepared: Send + 'static;
    /// The batch the caller receives.
    type Output;

    /// Host-side work on a worker thread: ragged ids and offsets in, buffers recycled to `pool`.
    ///
    /// # Errors
    ///
    /// A sink-specific error; the loader reports it for the batch's step.
    fn prepare(
        &self,
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
    ) -> Result<Self::Prepared>;

    /// The sequential part on the caller's thread, in plan order.
    ///
    /// # Errors
    ///
    /// A sink-specific error (a failed device copy).
    fn upload(&self, prepared: Self::Prepared) -> Result<Self::Output>;
}

/// The host sink: pads on the worker threads and hands out [`Batch`]es in pooled host memory.
/// It is the reference that every other sink matches byte for byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostSink;

impl<T: TokenId> DeviceSink<T> for HostSink {
    type Prepared = Batch<T>;
    type Output = Batch<T>;

    fn prepare(
        &self,
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
    ) -> Result<Batch<T>> {
        Ok(pad_host(staged, config, pool))
    }

    fn upload(&self, prepared: Batch<T>) -> Result<Batch<T>> {
        Ok(prepared)
    }
}
