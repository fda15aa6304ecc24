//! The null sink: the host half of a device path, and nothing after it.
//!
//! [`NullSink`] runs on the host exactly what the wgpu and CUDA sinks run there: the collator
//! writes ragged ids into the sink's staging pool, the workers build the index arrays the pad
//! kernels read ([`RaggedBatch::new`]), and the upload computes what the device sinks compute
//! before their copies (the slot sizes, the kernel's words, the bytes that would cross the bus).
//! Then it drops the batch instead of copying it. `shardflow bench --device null` times it
//! beside the host sink, so that the CPU cost per real token of feeding a GPU is measured where
//! there is none.

use std::sync::Mutex;

use super::ragged::{RaggedBatch, four_byte_ids};
use super::{Bound, DeviceBatch, DeviceSink, SinkStats};
use crate::collate::{Batch, CollateConfig, DocRef, Pool, PooledBuf, StagedBatch};
use crate::error::{Error, Result};
use crate::shard::TokenId;

/// Runs the device sinks' host-side staging and discards every batch. Build a loader with it:
/// `LoaderBuilder::new(sources).build(NullSink::new())`; its batches carry the step, the shape
/// and the document pieces, not the ids.
#[derive(Debug, Default)]
pub struct NullSink {
    pool: Pool,
    config: Bound,
    stats: Mutex<SinkStats>,
}

impl NullSink {
    /// A null sink with a staging pool of its own; the loader binds it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters so far: the bytes each upload would have sent, against a padded upload's; no
    /// buffer is ever created.
    pub fn stats(&self) -> SinkStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The name the null sink gives its device.
const DEVICE: &str = "null";

impl<T: TokenId> DeviceSink<T> for NullSink {
    type Prepared = RaggedBatch<T>;
    type Output = NullBatch;

    fn device(&self) -> String {
        DEVICE.into()
    }

    fn staging(&self) -> &Pool {
        &self.pool
    }

    /// Takes the 4-byte ids the device pad kernels take, and any batch size (there are no
    /// device limits).
    fn bind(&mut self, config: &CollateConfig, _rows: usize) -> Result<()> {
        four_byte_ids::<T>().map_err(|reason| Error::Device {
            device: DEVICE.into(),
            op: format!("collate {} ids", T::NAME),
            reason,
        })?;
        self.config.set(config);
        Ok(())
    }

    fn prepare(&self, staged: StagedBatch<T>) -> Result<RaggedBatch<T>> {
        Ok(RaggedBatch::new(staged, &self.pool))
    }

    /// What a device sink's upload computes on the host, then the batch is dropped: its
    /// staging goes back to the pool.
    fn upload(&self, p: RaggedBatch<T>, _batch: u64) -> Result<NullBatch> {
        let config = self.config.get(|| DEVICE.into())?;
        let (need, bound) = p.sizes(config);
        std::hint::black_box((need, bound, RaggedBatch::<T>::kernel_words(config)));
        let cu = p.cu_seqlens.as_ref().map_or(0, |c| c.as_bytes().len());
        let uploaded = p.staged.tokens.as_bytes().len()
            + p.staged.offsets.as_bytes().len()
            + p.row_pieces.as_bytes().len()
            + p.pieces.as_bytes().len()
            + p.lengths.as_bytes().len()
            + cu;
        p.count(
            &mut self.stats.lock().unwrap_or_else(|e| e.into_inner()),
            uploaded as u64,
            config,
        );
        let RaggedBatch { staged, .. } = p;
        Ok(NullBatch {
            step: staged.step,
            rows: staged.rows,
            width: staged.width,
            docs: staged.docs,
        })
    }
}

/// A batch the [`NullSink`] discarded: its step, shape and document pieces, no ids.
#[derive(Debug)]
pub struct NullBatch {
    /// The step this batch belongs to.
    pub step: u64,
    /// Rows, B.
    pub rows: usize,
    /// Columns, T.
    pub width: usize,
    /// The document pieces, in row order.
    pub docs: PooledBuf<DocRef>,
}

impl<T: TokenId> DeviceBatch<T> for NullBatch {
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

    /// # Errors
    ///
    /// Always [`Error::Device`]: the null sink keeps no ids.
    fn to_host(&self) -> Result<Batch<T>> {
        Err(Error::Device {
            device: DEVICE.into(),
            op: format!("read back batch {}", self.step),
            reason: "the null sink discards its batches; use the host sink to read them".into(),
        })
    }
}
