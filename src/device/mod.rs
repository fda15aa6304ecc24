//! Device sinks: where a staged batch leaves the host pipeline.
//!
//! A [`DeviceSink`] owns its staging memory (the host pool, pinned CUDA memory; see
//! [`DeviceSink::staging`]) and the collate configuration it was bound with
//! ([`DeviceSink::bind`], called once when the loader is built). It then has two halves.
//! [`DeviceSink::prepare`] runs on the loader's worker threads, in parallel, and does the
//! host-side work (the host sink pads there). [`DeviceSink::upload`] runs on the caller's
//! thread, in plan order, and does what must be sequential (a device queue); the batch it
//! returns carries whatever the caller must wait on before use (a wgpu submission, a CUDA
//! event).
//!
//! The collator writes staged ids into the sink's pool: buffers of that pool go back to it when
//! dropped, so a sink whose copies run asynchronously keeps them in its in-flight batch until the
//! device says it is done. The loader accounts a batch (position, metrics, statistics) only
//! after its upload succeeded, so a checkpoint never skips a batch that failed to arrive.
//!
//! Every sink must produce exactly what [`HostSink`] produces, and every batch type implements
//! [`DeviceBatch`] (step, rows, width, documents, a host copy), so code that takes any sink
//! reads its batches the same way.
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
mod null;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod ragged;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod slots;
#[cfg(feature = "wgpu")]
mod wgpu;

#[cfg(feature = "cuda")]
pub use self::cuda::*;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use self::null::*;
// For the Burn wgpu sink.
#[cfg(all(feature = "burn", feature = "wgpu"))]
pub(crate) use self::ragged::RaggedBatch;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub use self::ragged::{Field, FieldShape};
#[cfg(feature = "wgpu")]
pub use self::wgpu::*;

use crate::collate::{
    Batch, CollateConfig, DocRef, Layout, Pool, PooledBuf, StagedBatch, pad_host,
};
use crate::error::{Error, Result};
use crate::shard::TokenId;

/// Counters of a device sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkStats {
    /// Slots of device buffers created: a steady stream creates two, or up to three while the
    /// caller's steps keep the device busy, then none.
    pub slots_created: u64,
    /// Uploads that found free slots for their batch but none the device was done with (the
    /// last consumer's step still running): they made another slot, or, with the sink's
    /// slots all made, reused a busy one (`busy_reuses`). Counted by the CUDA sink; the wgpu
    /// sink waits for its slots on the host instead and counts none.
    pub busy_slots: u64,
    /// Uploads that reused a slot whose last consumer had not finished: the copies of the
    /// batch still overlap that consumer's step, but its pad kernel waits for it on the device.
    pub busy_reuses: u64,
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
///
/// The loader calls [`DeviceSink::bind`] once when it is built, then [`DeviceSink::prepare`]
/// on its workers and [`DeviceSink::upload`] on the caller's thread for every batch.
pub trait DeviceSink<T: TokenId>: Send + Sync + 'static {
    /// What `prepare` hands to `upload`.
    type Prepared: Send + 'static;
    /// The batch the caller receives (the built-in sinks' batches implement [`DeviceBatch`]).
    type Output;

    /// The device, as errors and reports name it (`host`, `wgpu llvmpipe (LLVM 15.0.6, 256
    /// bits)`).
    fn device(&self) -> String;

    /// The sink's staging memory, which the collator takes the staged batches `prepare`
    /// receives from (host memory, or pinned memory for the CUDA sink).
    fn staging(&self) -> &Pool;

    /// How the collator lays out the staged tokens `prepare` receives: ragged by default (what
    /// crosses a bus); [`Layout::Padded`] for a sink that hands the padded ids out as they are.
    fn layout(&self) -> Layout {
        Layout::Ragged
    }

    /// Binds the sink to the collate configuration of the stream it will take, whose batches
    /// have at most `rows` rows; the loader calls it once when it is built, before any batch.
    /// It checks that `T` ids can land on this device and that the largest batch the stream can
    /// make (`rows` rows of `config`'s widest row) fits it, so that a batch past a device limit
    /// is one line naming the limit before any work, not an error at the first upload. Binding
    /// again replaces the configuration.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the id type or the buffer or dispatch and the device limit
    /// it passes; the loader fails to build.
    fn bind(&mut self, config: &CollateConfig, rows: usize) -> Result<()>;

    /// Host-side work on a worker thread, under the bound configuration: the staged batch (from
    /// [`DeviceSink::staging`]) in, what the upload needs out.
    ///
    /// # Errors
    ///
    /// A sink-specific error; the loader reports it for the batch's step. [`Error::Device`]
    /// when the sink was never bound.
    fn prepare(&self, staged: StagedBatch<T>) -> Result<Self::Prepared>;

    /// The sequential part on the caller's thread, in plan order, for batch `batch` (the
    /// loader's batch index).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the device and the operation; the batch is not counted
    /// as delivered.
    fn upload(&self, prepared: Self::Prepared, batch: u64) -> Result<Self::Output>;
}

/// A batch as a sink hands it out, whatever memory holds it: what code generic over sinks (the
/// demo, the bench, the conformance suite) reads. Implemented by [`Batch`], `WgpuBatch`,
/// `CudaBatch` and `BurnBatch`.
pub trait DeviceBatch<T: TokenId> {
    /// The step this batch belongs to.
    fn step(&self) -> u64;

    /// Rows, B.
    fn rows(&self) -> usize;

    /// Columns, T.
    fn width(&self) -> usize;

    /// The document pieces, in row order (on the host).
    fn docs(&self) -> &[DocRef];

    /// Blocks until the device has written the batch (nothing to wait for on the host).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] when the device is lost.
    fn wait(&self) -> Result<()> {
        Ok(())
    }

    /// A copy of the batch in host memory, field for field: for checks and debugging.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the operation when the batch cannot be read back.
    fn to_host(&self) -> Result<Batch<T>>;
}

impl<T: TokenId> DeviceBatch<T> for Batch<T> {
    fn step(&self) -> u64 {
        self.step
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn width(&self) -> usize {
        self.width
    }

    fn docs(&self) -> &[DocRef] {
        &self.docs
    }

    fn to_host(&self) -> Result<Batch<T>> {
        fn copy<E: bytemuck::Pod>(pool: &Pool, from: &[E]) -> PooledBuf<E> {
            let mut to = pool.take::<E>(from.len());
            to.copy_from_slice(from);
            to
        }
        let pool = Pool::new();
        Ok(Batch {
            step: self.step,
            rows: self.rows,
            width: self.width,
            ids: copy(&pool, &self.ids),
            lengths: copy(&pool, &self.lengths),
            attention_mask: self.attention_mask.as_deref().map(|m| copy(&pool, m)),
            labels: self.labels.as_deref().map(|l| copy(&pool, l)),
            position_ids: self.position_ids.as_deref().map(|p| copy(&pool, p)),
            cu_seqlens: self.cu_seqlens.as_deref().map(|c| copy(&pool, c)),
            docs: copy(&pool, &self.docs),
        })
    }
}

/// The collate configuration a sink was bound with ([`DeviceSink::bind`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct Bound(Option<CollateConfig>);

impl Bound {
    /// Binds to `config`.
    pub fn set(&mut self, config: &CollateConfig) {
        self.0 = Some(config.clone());
    }

    /// The configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Device`] on `device` when the sink was never bound.
    pub fn get(&self, device: impl FnOnce() -> String) -> Result<&CollateConfig> {
        self.0.as_ref().ok_or_else(|| Error::Device {
            device: device(),
            op: "collate a batch".into(),
            reason: "the sink is not bound to a collate configuration; call DeviceSink::bind \
                     first (LoaderBuilder::build does)"
                .into(),
        })
    }
}

/// The host sink: pads on the worker threads and hands out [`Batch`]es in pooled host memory.
/// It is the reference that every other sink matches byte for byte.
#[derive(Clone, Debug, Default)]
pub struct HostSink {
    pool: Pool,
    config: Bound,
}

impl HostSink {
    /// A host sink with a pool of its own; the loader binds it.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<T: TokenId> DeviceSink<T> for HostSink {
    type Prepared = Batch<T>;
    type Output = Batch<T>;

    fn device(&self) -> String {
        "host".into()
    }

    fn staging(&self) -> &Pool {
        &self.pool
    }

    /// The collator writes the ids in place, padding included: no staging copy.
    fn layout(&self) -> Layout {
        Layout::Padded
    }

    /// Host memory takes any batch the loader allows.
    fn bind(&mut self, config: &CollateConfig, _rows: usize) -> Result<()> {
        self.config.set(config);
        Ok(())
    }

    fn prepare(&self, staged: StagedBatch<T>) -> Result<Batch<T>> {
        let config = self.config.get(|| "host".into())?;
        Ok(pad_host(staged, config, &self.pool))
    }

    fn upload(&self, prepared: Batch<T>, _batch: u64) -> Result<Batch<T>> {
        Ok(prepared)
    }
}
