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
//! A batch takes up to 2^28 cells (the loader's `MAX_BATCH_TOKENS`, 1 GiB of i32 ids). The
//! shader's workgroups form a 2-D grid, so no dispatch passes the 65 535 workgroups a dimension
//! holds; and where a field passes the device's largest storage binding (128 MiB on lavapipe, a
//! batch of 32 M cells), the batch is padded in chunks, each dispatch bound to windows of the
//! buffers that hold what its cells read. A batch whose buffers pass `max_buffer_size` is refused
//! when the sink is bound, naming the buffer and the limit.
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
use crate::loader::MAX_BATCH_TOKENS;
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
        let (need, bound) = p.sizes(config);
        let mut slot = self.slots.acquire(&need, &bound, |sizes| {
            let layout = fits_device(ctx, &sizes)?;
            Slot::new(ctx, sizes, layout)
        })?;
        let chunks = chunks(&p, config, &slot.layout);
        // Each chunk's parameters at its uniform offset, in pooled memory (no allocation in a
        // steady stream).
        let stride = slot.layout.params_stride as usize / 4;
        let mut params = self.pool.take::<u32>(chunks.len() * stride);
        for (c, chunk) in chunks.iter().enumerate() {
            params[c * stride..c * stride + chunk.params.len()].copy_from_slice(&chunk.params);
        }
        let cu = p.cu_seqlens.as_ref().map(|c| c.as_bytes()).unwrap_or(&[]);
        let writes: [(&wgpu::Buffer, &[u8]); 7] = [
            (&slot.params, params.as_bytes()),
            (&slot.tokens, s.tokens.as_bytes()),
            (&slot.offsets, s.offsets.as_bytes()),
            (&slot.row_pieces, p.row_pieces.as_bytes()),
            (&slot.pieces, p.pieces.as_bytes()),
            (&slot.lengths, p.lengths.as_bytes()),
            (&slot.cu_seqlens, cu),
        ];
        let submission = ctx.scoped(&format!("upload batch {batch}"), || {
            for (buffer, bytes) in writes {
                if !bytes.is_empty() {
                    ctx.queue().write_buffer(buffer, 0, bytes);
                }
            }
            let windowed: Vec<wgpu::BindGroup> = match &slot.bind_group {
                Some(_) => Vec::new(),
                None => chunks
                    .iter()
                    .enumerate()
                    .map(|(c, chunk)| slot.bind_chunk(c, chunk))
                    .collect::<Result<_>>()?,
            };
            let dispatches: Vec<(&wgpu::BindGroup, u64)> = chunks
                .iter()
                .enumerate()
                .map(|(c, chunk)| {
                    let bind = slot.bind_group.as_ref().unwrap_or_else(|| &windowed[c]);
                    (bind, chunk.cells().div_ceil(CELLS_PER_WORKGROUP))
                })
                .collect();
            ctx.dispatch_grid(Shader::PadCollate, &dispatches)
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

/// Cells one workgroup of `shaders/pad_collate.wgsl` writes: 64 invocations of four cells.
const CELLS_PER_WORKGROUP: u64 = 256;

/// Bytes of the shader's `Params`: twelve u32.
const PARAMS_BYTES: u64 = 48;

/// How a slot's batches are dispatched on this device: whole buffers in one dispatch, or, where
/// a field of the slot would pass the device's largest storage binding, chunks of cells each
/// over windows of the buffers.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Cells per chunk (a multiple of [`CELLS_PER_WORKGROUP`] and of the binding offset
    /// alignment when the batch is split).
    chunk_cells: usize,
    /// Whether the buffers are bound whole (one chunk, one bind group made with the slot).
    whole: bool,
    /// Bytes between the chunks' parameters in the uniform buffer.
    params_stride: u64,
    /// Chunks the largest batch of the slot takes.
    max_chunks: usize,
    /// The device's `min_storage_buffer_offset_alignment`.
    align: u64,
}

/// One dispatch of the pad shader: its parameters (the shader's `Params`) and, when the batch is
/// split, the windows of the bound buffers `(offset, size)` in bytes, in binding order 1..9.
struct Chunk {
    params: [u32; 12],
    windows: [(u64, u64); 8],
}

impl Chunk {
    /// The cells the chunk pads (`Params.cells`).
    fn cells(&self) -> u64 {
        u64::from(self.params[6])
    }
}

/// The largest multiple of `elements` at or below `i`.
fn align_down(i: u64, elements: u64) -> u64 {
    i - i % elements.max(1)
}

/// The window over elements `lo..hi` of a buffer of `len` elements of `size` bytes, its offset
/// widened down to a multiple of `align` bytes: the index of its first element and its `(offset,
/// size)` in bytes. An empty range (nothing to read) takes the buffer's first element, which
/// every buffer has (they are made at least 4 bytes long, and pieces for 8 per row).
fn window(lo: u64, hi: u64, len: u64, align: u64, size: u64) -> (u64, (u64, u64)) {
    let at = align_down(lo, align / size);
    if hi <= lo || at >= len {
        return (0, (0, size));
    }
    (at, (at * size, (hi - at) * size))
}

/// The dispatches of batch `p`: one over the whole buffers with every base 0 when `layout`
/// binds them whole, else one per `layout.chunk_cells` cells over windows of the buffers.
///
/// A chunk's windows hold what its cells read: the rows it touches (offsets, row pieces), the
/// real tokens of its cells plus the next one (a label reads it), and the pieces that start
/// in it plus the one before (the piece its first cell is in), each widened down to the binding
/// offset alignment. So no window holds more than `chunk_cells + 3` rows, tokens or pieces above
/// the alignment's worth, whatever the row width.
fn chunks<T: TokenId>(p: &RaggedBatch<T>, config: &CollateConfig, layout: &Layout) -> Vec<Chunk> {
    let s = &p.staged;
    let (rows, width) = (s.rows as u64, s.width as u64);
    let cells = rows * width;
    let [pad, ignore, fields] = RaggedBatch::<T>::kernel_words(config);
    let chunk = (layout.chunk_cells as u64).max(1);
    let off = |r: u64| u64::from(s.offsets[r as usize]);
    let row_pieces = |r: u64| u64::from(p.row_pieces[r as usize]);
    // The first piece of row `r` in `pieces[row_pieces(r)..row_pieces(r + 1)]` starting after
    // column `t`.
    let after = |r: u64, t: u64| {
        let (a, b) = (row_pieces(r) as usize, row_pieces(r + 1) as usize);
        (a + p.pieces[a..b].partition_point(|x| u64::from(x[0]) <= t)) as u64
    };
    let params = |base: u64, n: u64, bases: [u64; 3], lo: u64, hi: u64| {
        [
            rows as u32,
            width as u32,
            pad,
            ignore,
            fields,
            base as u32,
            n as u32,
            bases[0] as u32,
            bases[1] as u32,
            bases[2] as u32,
            lo as u32,
            hi as u32,
        ]
    };
    if layout.whole {
        return vec![Chunk {
            params: params(0, cells, [0; 3], 0, u64::from(u32::MAX)),
            windows: [(0, 0); 8],
        }];
    }
    let align = layout.align;
    let (total_tokens, total_pieces) = (s.tokens.len() as u64, p.pieces.len() as u64);
    (0..cells.div_ceil(chunk))
        .map(|c| {
            let (c0, c1) = (c * chunk, ((c + 1) * chunk).min(cells));
            let (r0, t0) = (c0 / width, c0 % width);
            let (r1, t1) = ((c1 - 1) / width, (c1 - 1) % width);
            let len = |r: u64| off(r + 1) - off(r);
            // Rows r0..=r1 and the offset after the last.
            let row_at = align_down(r0, align / 4);
            let rows_window = (row_at * 4, (r1 + 2 - row_at) * 4);
            // Real tokens of the chunk's cells, and the one after (a label).
            let (lo, hi) = (off(r0) + t0.min(len(r0)), off(r1) + (t1 + 2).min(len(r1)));
            let (token_at, tokens_window) = window(lo, hi, total_tokens, align, 4);
            // The piece the first cell is in (the last starting at or before it), to the first
            // starting after the last cell.
            let first = after(r0, t0).saturating_sub(1).max(row_pieces(r0));
            let last = after(r1, t1);
            let (piece_at, pieces_window) = window(first, last, total_pieces, align, 8);
            let n = c1 - c0;
            Chunk {
                params: params(c0, n, [row_at, token_at, piece_at], first, last),
                windows: [
                    tokens_window,
                    rows_window,
                    rows_window,
                    pieces_window,
                    (c0 * 4, n * 4),
                    (c0, n.div_ceil(4) * 4),
                    (c0 * 4, n * 4),
                    (c0 * 4, n * 4),
                ],
            }
        })
        .collect()
}

/// Checks a slot of `sizes` against the device's limits before any buffer is made, so that a
/// batch too large for this device is one line naming the limit, not wgpu's validation report;
/// and lays out its dispatches: whole buffers when every field fits the device's largest storage
/// binding, else chunks of cells over windows of the buffers.
///
/// # Errors
///
/// [`crate::Error::Device`] naming the batch limit (2^28 cells, the loader's
/// [`MAX_BATCH_TOKENS`], which the shader's 32-bit index math is sized for), or the buffer, its
/// size and the device limit it passes.
fn fits_device(ctx: &WgpuContext, sizes: &SlotSizes) -> Result<Layout> {
    let limits = ctx.device().limits();
    let (cells, rows) = (sizes.cells as u64, sizes.rows as u64);
    let op = format!(
        "collate batches of {} rows and up to {} tokens",
        sizes.rows, sizes.cells
    );
    let advice = "use a smaller batch size or sequence length";
    if cells > MAX_BATCH_TOKENS {
        return Err(ctx.error(
            op,
            format!(
                "{cells} cells pass the largest batch the pad shader takes, \
                 {MAX_BATCH_TOKENS} cells (2^28, the loader's MAX_BATCH_TOKENS; WGSL indexes \
                 with 32-bit integers); {advice}"
            ),
        ));
    }
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
    let max = limits.max_buffer_size;
    if let Some((name, bytes)) = bound.iter().find(|(_, bytes)| *bytes > max) {
        return Err(ctx.error(
            op,
            format!(
                "the {name} buffer needs {bytes} bytes, over the device's max_buffer_size of \
                 {max} bytes; {advice}"
            ),
        ));
    }
    let binding = limits.max_storage_buffer_binding_size;
    let align = u64::from(limits.min_storage_buffer_offset_alignment).max(8);
    let uniform = u64::from(limits.min_uniform_buffer_offset_alignment).max(4);
    let params_stride = PARAMS_BYTES.next_multiple_of(uniform);
    let whole = bound.iter().all(|(_, bytes)| *bytes <= binding);
    let chunk_cells = if whole {
        cells.max(1)
    } else {
        // Each window holds at most a chunk's cells plus three, plus the alignment's worth
        // (`chunks`); pieces take 8 bytes each, the most of any window.
        let step = CELLS_PER_WORKGROUP.max(align);
        let fit = (binding / 8).saturating_sub(3 + align / 4);
        fit - fit % step
    };
    if chunk_cells == 0 {
        return Err(ctx.error(
            op,
            format!(
                "the device's max_storage_buffer_binding_size of {binding} bytes holds no chunk \
                 of {} cells; {advice}",
                CELLS_PER_WORKGROUP.max(align)
            ),
        ));
    }
    let max_chunks = cells.div_ceil(chunk_cells).max(1);
    // Workgroups of a chunk as a 2-D grid: x and y each at most the per-dimension limit.
    let per_dimension = u64::from(limits.max_compute_workgroups_per_dimension);
    let workgroups = chunk_cells.div_ceil(CELLS_PER_WORKGROUP);
    if workgroups > per_dimension * per_dimension {
        return Err(ctx.error(
            op,
            format!(
                "padding {chunk_cells} cells in one dispatch takes {workgroups} workgroups, over \
                 the device's max_compute_workgroups_per_dimension of {per_dimension} squared; \
                 {advice}"
            ),
        ));
    }
    let params_bytes = params_stride * max_chunks;
    if params_bytes > max {
        return Err(ctx.error(
            op,
            format!(
                "the parameters of {max_chunks} chunks need {params_bytes} bytes, over the \
                 device's max_buffer_size of {max} bytes; {advice}"
            ),
        ));
    }
    Ok(Layout {
        chunk_cells: chunk_cells as usize,
        whole,
        params_stride,
        max_chunks: max_chunks as usize,
        align,
    })
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
    /// How batches in this slot are dispatched.
    layout: Layout,
    /// The whole buffers bound, when the layout binds them whole (else each upload binds
    /// windows per chunk).
    bind_group: Option<wgpu::BindGroup>,
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
    fn new(ctx: &Arc<WgpuContext>, sizes: SlotSizes, layout: Layout) -> Result<Self> {
        use wgpu::BufferUsages as U;
        let input = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let output = U::STORAGE | U::COPY_SRC;
        let n = |count: usize, bytes: usize| (count * bytes) as u64;
        let buffers = ctx.scoped("create batch buffers", || {
            [
                ctx.buffer(
                    "params",
                    layout.params_stride * layout.max_chunks as u64,
                    U::UNIFORM | U::COPY_DST,
                ),
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
        let bind_group = match layout.whole {
            true => Some(ctx.bind(Shader::PadCollate, &bound)?),
            false => None,
        };
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
            layout,
            bind_group,
            fence: None,
        })
    }

    /// A bind group of chunk `c`'s windows: its parameters and its `chunk`'s buffer windows.
    fn bind_chunk(&self, c: usize, chunk: &Chunk) -> Result<wgpu::BindGroup> {
        let buffers = [
            &self.tokens,
            &self.offsets,
            &self.row_pieces,
            &self.pieces,
            &self.ids,
            &self.mask,
            &self.labels,
            &self.positions,
        ];
        let mut windows = vec![(
            &self.params,
            c as u64 * self.layout.params_stride,
            PARAMS_BYTES,
        )];
        windows.extend(
            buffers
                .into_iter()
                .zip(chunk.windows)
                .map(|(buffer, (offset, size))| (buffer, offset, size)),
        );
        self.ctx.bind_windows(Shader::PadCollate, &windows)
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
