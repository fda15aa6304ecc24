//! Device sinks: where a staged batch leaves the host pipeline.
//!
//! A [`DeviceSink`] has two halves. [`DeviceSink::prepare`] runs on the loader's worker threads,
//! in parallel, with a context of the worker's own ([`DeviceSink::Worker`]: a staging belt, a
//! copy stream), and does the host-side work (the host sink pads there). [`DeviceSink::upload`]
//! runs on the caller's thread, in plan order, and does what must be sequential (a device
//! queue); what it returns carries whatever the caller must wait on before use (a wgpu
//! submission, a CUDA event).
//!
//! The sink supplies the staging memory the collator writes ragged ids into
//! ([`DeviceSink::staging`]): buffers of that pool go back to it when dropped, so a sink whose
//! copies run asynchronously keeps them in its in-flight batch until the device says it is done.
//! The loader accounts a batch (position, metrics, statistics) only after its upload succeeded,
//! so a checkpoint never skips a batch that failed to arrive.
//!
//! Every sink must produce exactly what [`HostSink`] produces.
//!
//! - [`HostSink`]: padded [`Batch`]es in pooled host memory, the reference.
//! - [`WgpuSink`] (feature `wgpu`): ragged ids to the device, padded there by
//!   `shaders/pad_collate.wgsl`.
//! - [`CudaSink`] (feature `cuda`): ragged ids written by the workers into pinned memory, copied
//!   asynchronously on a copy stream and padded by `kernels/pad_collate.cu`, with an event for
//!   the consumer's stream.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod ragged;
#[cfg(feature = "wgpu")]
mod wgpu;

#[cfg(feature = "cuda")]
pub use self::cuda::*;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use self::ragged::{Field, FieldShape, RaggedBatch};
#[cfg(feature = "wgpu")]
pub use self::wgpu::*;

use crate::collate::{Batch, CollateConfig, Layout, Pool, StagedBatch, pad_host};
use crate::error::Result;
use crate::shard::TokenId;

/// Counters of a device sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// Slots of device buffers created (a steady stream creates two, then none).
    pub slots_created: u64,
    /// Device buffers created for slots.
    pub buffers_created: u64,
    /// Batches uploaded.
    pub uploads: u64,
    /// Bytes written to the device: the ragged ids and the index arrays.
    pub bytes_uploaded: u64,
    /// Bytes a host-padded upload of the same batches would have written: every requested
    /// `[B, T]` field, the lengths and `cu_seqlens`.
    pub padded_bytes: u64,
}

/// Where staged batches go: host memory, a wgpu buffer, a CUDA buffer, a Burn tensor.
pub trait DeviceSink<T: TokenId>: Send + Sync + 'static {
    /// A worker's own state, made once per thread that builds batches.
    type Worker: Send + 'static;
    /// What `prepare` hands to `upload`.
    type Prepared: Send + 'static;
    /// The batch the caller receives.
    type Output;

    /// The device, as errors and reports name it (`host`, `wgpu llvmpipe (LLVM 15.0.6, 256
    /// bits)`).
    fn device(&self) -> String;

    /// The pool the collator takes staging memory from. Host memory by default.
    fn staging(&self) -> Pool {
        Pool::new()
    }

    /// How the collator lays out the staged tokens `prepare` receives: ragged by default (what
    /// crosses a bus); [`Layout::Padded`] for a sink that hands the padded ids out as they are.
    fn layout(&self) -> Layout {
        Layout::Ragged
    }

    /// Checks, when the loader is built, that the largest batch the stream can make (`rows`
    /// rows of `config`'s widest row) fits this device, so that a batch past a device limit is
    /// one line naming the limit before any work, not an error at the first upload. Nothing by
    /// default (host memory takes any batch the loader allows).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the buffer or dispatch and the device limit it passes.
    fn check_batch(&self, rows: usize, config: &CollateConfig) -> Result<()> {
        let _ = (rows, config);
        Ok(())
    }

    /// A new worker context.
    ///
    /// # Errors
    ///
    /// A sink-specific error (the output type cannot live on this device, a stream cannot be
    /// created); the loader fails to build.
    fn worker(&self) -> Result<Self::Worker>;

    /// Host-side work on a worker thread: ragged ids and offsets in, buffers recycled to `pool`.
    ///
    /// # Errors
    ///
    /// A sink-specific error; the loader reports it for the batch's step.
    fn prepare(
        &self,
        worker: &mut Self::Worker,
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
    ) -> Result<Self::Prepared>;

    /// The sequential part on the caller's thread, in plan order, for batch `batch` (the
    /// loader's batch index).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the device and the operation; the batch is not counted
    /// as delivered.
    fn upload(
        &self,
        prepared: Self::Prepared,
        batch: u64,
        config: &CollateConfig,
    ) -> Result<Self::Output>;
}

/// The host sink: pads on the worker threads and hands out [`Batch`]es in pooled host memory.
/// It is the reference that every other sink matches byte for byte.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostSink;

impl<T: TokenId> DeviceSink<T> for HostSink {
    type Worker = ();
    type Prepared = Batch<T>;
    type Output = Batch<T>;

    fn device(&self) -> String {
        "host".into()
    }

    /// The collator writes the ids in place, padding included: no staging copy.
    fn layout(&self) -> Layout {
        Layout::Padded
    }

    fn worker(&self) -> Result<()> {
        Ok(())
    }

    fn prepare(
        &self,
        _worker: &mut (),
        staged: StagedBatch<T>,
        config: &CollateConfig,
        pool: &Pool,
    ) -> Result<Batch<T>> {
        Ok(pad_host(staged, config, pool))
    }

    fn upload(&self, prepared: Batch<T>, _batch: u64, _config: &CollateConfig) -> Result<Batch<T>> {
        Ok(prepared)
    }
}
