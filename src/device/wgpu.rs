//! The wgpu sink: only real tokens cross to the device, and `shaders/pad_collate.wgsl` pads
//! them there into ids, attention mask, labels and position ids, exactly as [`pad_host`]
//! does.
//!
//! Workers prepare a batch's small index arrays on the host (row offsets, each row's document
//! pieces, lengths, `cu_seqlens`). The upload, on the caller's thread in plan order, writes the
//! ragged ids and those arrays into a slot of device buffers and dispatches the shader. Slots
//! are recycled: a slot is free again once the caller has dropped the batch that used it and
//! the device has finished its work (its submission index is the fence), so while batch k is in
//! use batch k+1 is written into another slot, and a steady stream allocates no wgpu buffer
//! ([`WgpuSink::stats`] counts them).
//!
//! [`pad_host`]: crate::collate::pad_host

use std::collections::HashMap;
use std::sync::Arc;

use super::ragged::{Field, FieldSet, Lease, RaggedBatch, SlotSizes, Slots, four_byte_ids};
use super::{Bound, DeviceBatch, SinkStats};
use crate::collate::{Batch, CollateConfig, DocRef, Pool, PooledBuf, StagedBatch};
use crate::device::DeviceSink;
use crate::error::Result;
use crate::gpu::{Shader, WgpuContext};
use crate::shard::TokenId;

/// Collates batches into wgpu buffers. Build a loader with it:
/// `LoaderBuilder::new(sources).build(WgpuSink::new(WgpuContext::new()?)?)`.
pub struct WgpuSink {
    ctx: Arc<WgpuContext>,
    slots: Slots<Slot>,
    pool: Pool,
    config: Bound,
}

impl std::fmt::Debug for WgpuSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuSink")
            .field("device", &self.ctx.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl WgpuSink {
    /// A sink on `ctx`'s device; compiles the collate shader now.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] when the shader does not compile on this device.
    pub fn new(ctx: Arc<WgpuContext>) -> Result<Self> {
        ctx.pipeline(Shader::PadCollate)?;
        Ok(WgpuSink {
            ctx,
            slots: Slots::default(),
            pool: Pool::new(),
            config: Bound::default(),
        })
    }

    /// The context.
    pub fn context(&self) -> &Arc<WgpuContext> {
        &self.ctx
    }

    /// The pool the sink's staging and readbacks come from.
    pub fn staging_pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> SinkStats {
        self.slots.stats()
    }
}

impl<T: TokenId> DeviceSink<T> for WgpuSink {
    type Prepared = RaggedBatch<T>;
    type Output = WgpuBatch<T>;

    fn device(&self) -> String {
        self.ctx.name().to_string()
    }

    fn staging(&self) -> &Pool {
        &self.pool
    }

    fn bind(&mut self, config: &CollateConfig, rows: usize) -> Result<()> {
        fits_device(&self.ctx, &SlotSizes::widest(config, rows))?;
        four_byte_ids::<T>().map_err(|why| {
            self.ctx.error(
                format!("collate {} ids", T::NAME),
                format!("WGSL has no 64-bit integers: {why}"),
            )
        })?;
        self.config.set(config);
        Ok(())
    }

    fn prepare(&self, staged: StagedBatch<T>) -> Result<RaggedBatch<T>> {
        Ok(RaggedBatch::new(staged, &self.pool))
    }

    fn upload(&self, p: RaggedBatch<T>, batch: u64) -> Result<WgpuBatch<T>> {
        let ctx = &self.ctx;
        let config = self.config.get(|| ctx.name().to_string())?;
        let s = &p.staged;
        let (rows, width) = (s.rows, s.width);
        let cells = rows * width;
        let (need, bound) = p.sizes(config);
        let mut slot = self.slots.acquire(&need, &bound, |sizes| {
            fits_device(ctx, &sizes)?;
            Slot::new(ctx, sizes)
        })?;
        let [pad, ignore, fields] = RaggedBatch::<T>::kernel_words(config);
        let params = [
            rows as u32,
            width as u32,
            pad,
            ignore,
            fields,
            cells as u32,
            0,
            0,
        ];
        let cu = p.cu_seqlens.as_ref().map(|c| c.as_bytes()).unwrap_or(&[]);
        let writes: [(&wgpu::Buffer, &[u8]); 7] = [
            (&slot.params, bytemuck::cast_slice(&params)),
            (&slot.tokens, s.tokens.as_bytes()),
            (&slot.offsets, s.offsets.as_bytes()),
            (&slot.row_pieces, p.row_pieces.as_bytes()),
            (&slot.pieces, p.pieces.as_bytes()),
            (&slot.lengths, p.lengths.as_bytes()),
            (&slot.cu_seqlens, cu),
        ];
        let workgroups = cells.div_ceil(4).div_ceil(64) as u32;
        let submission = ctx.scoped(&format!("upload batch {batch}"), || {
            for (buffer, bytes) in writes {
                if !bytes.is_empty() {
                    ctx.queue().write_buffer(buffer, 0, bytes);
                }
            }
            ctx.dispatch(Shader::PadCollate, &slot.bind_group, workgroups)
        })??;
        let uploaded: u64 = writes.iter().map(|(_, b)| b.len() as u64).sum();
        slot.fence = Some(submission.clone());
        p.count(&mut self.slots.stats_mut(), uploaded, config);
        let fields = FieldSet::new(config, rows, width, p.cu_seqlens.as_ref().map(|c| c.len()));
        let RaggedBatch { staged, .. } = p;
        Ok(WgpuBatch {
            ctx: self.ctx.clone(),
            slot,
            submission,
            pool: self.pool.clone(),
            step: staged.step,
            rows,
            width,
            docs: staged.docs,
            fields,
            _t: std::marker::PhantomData,
        })
    }
}

/// Checks a slot of `sizes` against the device's limits before any buffer is made, so that a
/// batch too large for this device is one line naming the limit, not wgpu's validation report.
///
/// # Errors
///
/// [`crate::Error::Device`] naming the buffer, its size and the limit it passes.
fn fits_device(ctx: &WgpuContext, sizes: &SlotSizes) -> Result<()> {
    let limits = ctx.device().limits();
    let (cells, rows) = (sizes.cells as u64, sizes.rows as u64);
    let op = format!(
        "collate batches of {} rows and up to {} tokens",
        sizes.rows, sizes.cells
    );
    let advice = "use a smaller batch size or sequence length";
    // The bound buffers, in the order of shaders/pad_collate.wgsl.
    let bound = [
        ("ragged ids", 4 * sizes.tokens as u64),
        ("row offsets", 4 * (rows + 1)),
        ("row pieces", 4 * (rows + 1)),
        ("pieces", 8 * sizes.pieces as u64),
        ("ids", 4 * cells),
        ("attention mask", 4 * cells.div_ceil(4)),
        ("labels", 4 * cells),
        ("position ids", 4 * cells),
    ];
    for (name, bytes) in bound {
        for (limit, max) in [
            ("max_buffer_size", limits.max_buffer_size),
            (
                "max_storage_buffer_binding_size",
                limits.max_storage_buffer_binding_size,
            ),
        ] {
            if bytes > max {
                return Err(ctx.error(
                    op,
                    format!(
                        "the {name} buffer needs {bytes} bytes, over the device's {limit} of \
                         {max} bytes; {advice}"
                    ),
                ));
            }
        }
    }
    // One invocation per four cells, 64 to a workgroup, in one dimension.
    let workgroups = cells.div_ceil(4).div_ceil(64);
    let max = limits.max_compute_workgroups_per_dimension;
    if workgroups > u64::from(max) {
        return Err(ctx.error(
            op,
            format!(
                "padding {cells} cells takes {workgroups} workgroups, over the device's \
                 max_compute_workgroups_per_dimension of {max} ({} cells); {advice}",
                u64::from(max) * 256
            ),
        ));
    }
    Ok(())
}

/// One batch's device buffers, recycled from batch to batch.
struct Slot {
    ctx: Arc<WgpuContext>,
    sizes: SlotSizes,
    params: wgpu::Buffer,
    tokens: wgpu::Buffer,
    offsets: wgpu::Buffer,
    row_pieces: wgpu::Buffer,
    pieces: wgpu::Buffer,
    lengths: wgpu::Buffer,
    cu_seqlens: wgpu::Buffer,
    ids: wgpu::Buffer,
    mask: wgpu::Buffer,
    labels: wgpu::Buffer,
    positions: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    /// The submission that last used the slot, until it is waited for.
    fence: Option<wgpu::SubmissionIndex>,
}

impl super::ragged::Slot for Slot {
    const BUFFERS: u64 = 11;

    fn sizes(&self) -> &SlotSizes {
        &self.sizes
    }

    /// Waits for the device to finish the slot's last use.
    fn reuse(&mut self) -> Result<()> {
        match self.fence.take() {
            Some(fence) => self.ctx.wait(Some(fence)),
            None => Ok(()),
        }
    }
}

impl Slot {
    fn new(ctx: &Arc<WgpuContext>, sizes: SlotSizes) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let input = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let output = U::STORAGE | U::COPY_SRC;
        let n = |count: usize, bytes: usize| (count * bytes) as u64;
        let buffers = ctx.scoped("create batch buffers", || {
            [
                ctx.buffer("params", 32, U::UNIFORM | U::COPY_DST),
                ctx.buffer("ragged ids", n(sizes.tokens, 4), input),
                ctx.buffer("row offsets", n(sizes.rows + 1, 4), input),
                ctx.buffer("row pieces", n(sizes.rows + 1, 4), input),
                ctx.buffer("pieces", n(sizes.pieces, 8), input),
                ctx.buffer("ids", n(sizes.cells, 4), output),
                ctx.buffer("attention mask", n(sizes.cells.div_ceil(4), 4), output),
                ctx.buffer("labels", n(sizes.cells, 4), output),
                ctx.buffer("position ids", n(sizes.cells, 4), output),
                ctx.buffer("lengths", n(sizes.rows, 4), input),
                ctx.buffer("cu_seqlens", n(sizes.pieces + 1, 4), input),
            ]
        })?;
        // Bindings 0..9 in the order of shaders/pad_collate.wgsl; the last two are not bound.
        let bound: Vec<&wgpu::Buffer> = buffers[..9].iter().collect();
        let bind_group = ctx.bind(Shader::PadCollate, &bound)?;
        let [
            params,
            tokens,
            offsets,
            row_pieces,
            pieces,
            ids,
            mask,
            labels,
            positions,
            lengths,
            cu_seqlens,
        ] = buffers;
        Ok(Slot {
            ctx: ctx.clone(),
            sizes,
            params,
            tokens,
            offsets,
            row_pieces,
            pieces,
            lengths,
            cu_seqlens,
            ids,
            mask,
            labels,
            positions,
            bind_group,
            fence: None,
        })
    }
}

/// A device buffer holding one field of a batch: `bytes` bytes at the start of `buffer` (which
/// may be larger: slots are sized for the largest batch).
#[derive(Clone, Copy, Debug)]
pub struct DeviceField<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// The field's shape: `[B, T]`, `[B]` or `[segments + 1]`.
    pub shape: [usize; 2],
    /// How many of the shape's dimensions are real (1 or 2).
    pub dims: usize,
    /// The element type: `i32`, `u32` or `u8`.
    pub dtype: &'static str,
    /// Bytes of the field.
    pub bytes: u64,
}

/// A batch in wgpu buffers. Its fields are written by a submission that may still be running:
/// wgpu orders later work on the same queue after it, and [`WgpuBatch::wait`] blocks until it
/// is done. The buffers stay this batch's until it is dropped.
pub struct WgpuBatch<T: TokenId> {
    ctx: Arc<WgpuContext>,
    slot: Lease<Slot>,
    submission: wgpu::SubmissionIndex,
    pool: Pool,
    /// The step this batch belongs to.
    pub step: u64,
    /// Rows, B.
    pub rows: usize,
    /// Columns, T.
    pub width: usize,
    /// The document pieces, in row order (on the host).
    pub docs: PooledBuf<DocRef>,
    fields: FieldSet,
    _t: std::marker::PhantomData<T>,
}

impl<T: TokenId> std::fmt::Debug for WgpuBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBatch")
            .field("step", &self.step)
            .field("rows", &self.rows)
            .field("width", &self.width)
            .finish()
    }
}

impl<T: TokenId> WgpuBatch<T> {
    /// `field`'s buffer and shape, when the batch holds it.
    pub fn field(&self, field: Field) -> Option<DeviceField<'_>> {
        let shape = self.fields.shape::<T>(field)?;
        let slot = &self.slot;
        let buffer = match field {
            Field::Ids => &slot.ids,
            Field::Lengths => &slot.lengths,
            Field::AttentionMask => &slot.mask,
            Field::Labels => &slot.labels,
            Field::PositionIds => &slot.positions,
            Field::CuSeqlens => &slot.cu_seqlens,
        };
        Some(DeviceField {
            buffer,
            shape: shape.shape,
            dims: shape.dims,
            dtype: shape.dtype,
            bytes: shape.bytes,
        })
    }

    /// Token ids `[B, T]`.
    pub fn ids(&self) -> DeviceField<'_> {
        self.field(Field::Ids).expect("every batch has ids")
    }

    /// The attention mask `[B, T]`, one byte per element, when the collate config asks for it.
    pub fn attention_mask(&self) -> Option<DeviceField<'_>> {
        self.field(Field::AttentionMask)
    }

    /// Labels `[B, T]`, when the collate config asks for them.
    pub fn labels(&self) -> Option<DeviceField<'_>> {
        self.field(Field::Labels)
    }

    /// Position ids `[B, T]`, when the collate config asks for them.
    pub fn position_ids(&self) -> Option<DeviceField<'_>> {
        self.field(Field::PositionIds)
    }

    /// Real tokens per row `[B]` (u32).
    pub fn lengths(&self) -> DeviceField<'_> {
        self.field(Field::Lengths).expect("every batch has lengths")
    }

    /// Document boundaries over the real tokens `[segments + 1]` (i32), for packed batches.
    pub fn cu_seqlens(&self) -> Option<DeviceField<'_>> {
        self.field(Field::CuSeqlens)
    }

    /// The context whose device holds the batch.
    pub fn context(&self) -> &Arc<WgpuContext> {
        &self.ctx
    }

    /// Blocks until the device has written the batch.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] when the device is lost.
    pub fn wait(&self) -> Result<()> {
        self.ctx.wait(Some(self.submission.clone()))
    }

    /// Copies the batch back into a host [`Batch`], field for field: for tests and debugging.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the operation.
    pub fn to_host(&self) -> Result<Batch<T>> {
        let (present, fields): (Vec<Field>, Vec<DeviceField<'_>>) = Field::ALL
            .into_iter()
            .filter_map(|f| Some((f, self.field(f)?)))
            .unzip();
        let ranges: Vec<_> = fields.iter().map(|f| (f.buffer, 0, f.bytes)).collect();
        let read: HashMap<Field, Vec<u8>> = present
            .into_iter()
            .zip(self.ctx.read_many(&ranges)?)
            .collect();
        self.fields
            .host_batch(self.step, &self.docs, &self.pool, |field, out| {
                out.copy_from_slice(&read[&field][..out.len()]);
                Ok(())
            })
    }
}

impl<T: TokenId> DeviceBatch<T> for WgpuBatch<T> {
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

    fn wait(&self) -> Result<()> {
        WgpuBatch::wait(self)
    }

    fn to_host(&self) -> Result<Batch<T>> {
        WgpuBatch::to_host(self)
    }
}
