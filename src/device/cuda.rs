//! The CUDA sink (feature `cuda`): the workers write ragged ids and the small index arrays
//! straight into pinned (page-locked) host memory, the sink's staging pool; the upload, on the
//! caller's thread in plan order, copies them asynchronously to a slot of device buffers on the
//! context's copy stream, and `kernels/pad_collate.cu` pads them on the compute stream into ids,
//! attention mask, labels and position ids, exactly as [`pad_host`] does. Only real tokens cross
//! the bus.
//!
//! Ordering is by events, never by blocking the host:
//!
//! 1. the copy stream waits for the slot's `ready` event (its last kernel has read the slot's
//!    inputs), then copies the kernel's private inputs (ragged ids, row offsets, row pieces,
//!    pieces); `copied` is recorded after them;
//! 2. the compute stream waits for `copied` and for the slot's `released` event (its last
//!    consumer is done with the fields it sees), copies the fields the consumer sees as they
//!    are (lengths, `cu_seqlens`), and runs the kernel; `ready` is recorded after it;
//! 3. the consumer's stream waits for `ready` ([`CudaBatch::use_on`]; the compute stream is the
//!    default consumer and needs no wait);
//! 4. when the batch is dropped, `released` is recorded on the consumer's stream and the slot
//!    goes back to the sink.
//!
//! So only the kernel and the consumer-visible copies wait for the last consumer of a slot: the
//! copies of batch k + 1 run on the copy engine while step k runs. An upload takes the oldest
//! free slot whose `released` has completed, makes another while all are busy (up to
//! [`CudaSink::MAX_SLOTS`]), and only past that reuses a busy one, whose kernel then waits on
//! the device ([`SinkStats`] counts each case). A loop that holds each batch while the next is
//! written, or that drops each batch before the next (`for batch in loader { step(batch) }`)
//! while its steps run on the device, uses two slots; a host running ahead of the device three.
//!
//! The pinned staging of a batch stays with its slot until the slot is next used, when its
//! `ready` event has completed (checked before the memory goes back to the pool), so a worker
//! never overwrites memory a copy is still reading. Every event the host waits on is created
//! with `CU_EVENT_BLOCKING_SYNC`: a waiting thread sleeps instead of spinning a core the
//! loader's workers need. Past the warm-up nothing is allocated, on the device or in pinned
//! memory ([`CudaSink::stats`], [`CudaSink::staging_pool`]).
//!
//! The pinned memory and the kernel launch are the CUDA context's ([`crate::gpu::cuda`]): this
//! module holds no unsafe launch.
//!
//! [`pad_host`]: crate::collate::pad_host

use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DeviceRepr};

use super::ragged::{Field, FieldSet, RaggedBatch, SlotSizes, four_byte_ids};
use super::slots::{Lease, MAX_SLOTS, Slots};
use super::{Bound, DeviceBatch, SinkStats};
use crate::collate::{Batch, CollateConfig, DocRef, HostMemory, Pool, PooledBuf, StagedBatch};
use crate::device::DeviceSink;
use crate::error::Result;
use crate::gpu::cuda::{
    CudaContext, PadCollateArgs, PinnedMemory, device_error, launch_pad_collate,
};
use crate::gpu::nvrtc::Kernel;
use crate::shard::TokenId;

/// Collates batches into CUDA device buffers. Build a loader with it:
/// `LoaderBuilder::new(sources).build(CudaSink::new(CudaContext::for_local_rank(r)?)?)`.
pub struct CudaSink {
    ctx: Arc<CudaContext>,
    slots: Slots<Slot>,
    pool: Pool,
    config: Bound,
}

impl std::fmt::Debug for CudaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaSink")
            .field("device", &self.ctx.label())
            .field("stats", &self.stats())
            .finish()
    }
}

impl CudaSink {
    /// A sink on `ctx`'s device; compiles (NVRTC) and loads the pad kernel now.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Kernel`] or [`crate::Error::Device`] when the kernel cannot be compiled
    /// or loaded for this device.
    pub fn new(ctx: Arc<CudaContext>) -> Result<Self> {
        ctx.function(Kernel::PadCollate, "pad_collate")?;
        let pool = Pool::with_memory(Arc::new(PinnedStaging(ctx.pinned_memory())));
        Ok(CudaSink {
            ctx,
            slots: Slots::default(),
            pool,
            config: Bound::default(),
        })
    }

    /// A sink on this rank's device, as [`CudaContext::for_local_rank`] picks it.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming what is missing (libcuda, a device), a `LOCAL_RANK` that
    /// names no device, or the driver's reason; as [`CudaSink::new`].
    pub fn for_local_rank(local_rank: usize) -> Result<Self> {
        Self::new(CudaContext::for_local_rank(local_rank)?)
    }

    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The pinned pool the workers' staging and the readbacks come from.
    pub fn staging_pool(&self) -> Pool {
        self.pool.clone()
    }

    /// Counters so far: slots created, uploads that found every free slot still in use by its
    /// consumer (`busy_slots`) and those that then reused one (`busy_reuses`), bytes sent.
    pub fn stats(&self) -> SinkStats {
        self.slots.stats()
    }

    /// The slots of device buffers a sink makes at most while its free ones are all still in
    /// use on the device; past it an upload reuses the oldest (see the module docs).
    pub const MAX_SLOTS: usize = MAX_SLOTS;

    /// Refuses a batch (or a slot) the pad kernel cannot index, before any buffer is made.
    fn check(&self, op: &str, sizes: &SlotSizes) -> Result<()> {
        sizes.check_u32().map_err(|why| {
            device_error(
                &self.ctx.label(),
                op,
                format!(
                    "a batch of {} rows and up to {} tokens: {why}; use a smaller batch size or \
                     sequence length",
                    sizes.rows, sizes.cells
                ),
            )
        })
    }
}

impl<T: TokenId> DeviceSink<T> for CudaSink {
    type Prepared = RaggedBatch<T>;
    type Output = CudaBatch<T>;

    fn device(&self) -> String {
        self.ctx.label()
    }

    fn staging(&self) -> &Pool {
        &self.pool
    }

    fn bind(&mut self, config: &CollateConfig, rows: usize) -> Result<()> {
        four_byte_ids::<T>().map_err(|why| {
            device_error(&self.ctx.label(), &format!("collate {} ids", T::NAME), why)
        })?;
        self.check("bind the collate config", &SlotSizes::widest(config, rows))?;
        self.config.set(config);
        Ok(())
    }

    fn prepare(&self, staged: StagedBatch<T>) -> Result<RaggedBatch<T>> {
        Ok(RaggedBatch::new(staged, &self.pool))
    }

    fn upload(&self, p: RaggedBatch<T>, batch: u64) -> Result<CudaBatch<T>> {
        let ctx = &self.ctx;
        let config = self.config.get(|| ctx.label())?;
        let (rows, width) = (p.staged.rows, p.staged.width);
        let op = format!("upload batch {batch}");
        let (need, bound) = p.sizes(config);
        self.check(&op, &need)?;
        let mut lease = self.slots.acquire(&need, &bound, |sizes| {
            self.check(&op, &sizes)?;
            Slot::new(ctx, sizes)
        })?;
        let slot: &mut Slot = &mut lease;
        let uploaded = match queue(ctx, slot, &p, config, &op) {
            Ok(uploaded) => uploaded,
            Err(e) => {
                // Copies already queued read `p`'s pinned buffers, which go back to the pool when
                // `p` is dropped: they finish first. (A driver that fails here has lost the
                // device; its own error is the one to report.)
                let _ = ctx.synchronize(ctx.copy_stream(), &op);
                let _ = ctx.synchronize(ctx.compute_stream(), &op);
                return Err(e);
            }
        };
        slot.used = true;
        // The compute stream is the default consumer.
        slot.consumer = ctx.compute_stream().clone();
        p.count(&mut self.slots.stats_mut(), uploaded, config);
        let fields = FieldSet::new(config, rows, width, p.cu_seqlens.as_ref().map(|c| c.len()));
        let RaggedBatch {
            staged,
            row_pieces,
            pieces,
            lengths,
            cu_seqlens,
        } = p;
        let StagedBatch {
            step,
            tokens,
            offsets,
            docs,
            ..
        } = staged;
        // The pinned buffers the copies read stay with the slot until `ready` (after every copy).
        slot.staging = Some(Box::new((
            tokens, offsets, row_pieces, pieces, lengths, cu_seqlens,
        )));
        Ok(CudaBatch {
            ctx: self.ctx.clone(),
            slot: lease,
            pool: self.pool.clone(),
            step,
            rows,
            width,
            docs,
            fields,
            _t: std::marker::PhantomData,
        })
    }
}

/// Queues the copies and the kernel of an upload of `p` into `slot`, in the order of the module
/// docs; the bytes copied. The caller settles the streams when this fails part way.
fn queue<T: TokenId>(
    ctx: &CudaContext,
    slot: &mut Slot,
    p: &RaggedBatch<T>,
    config: &CollateConfig,
    op: &str,
) -> Result<u64> {
    let (copy, compute) = (ctx.copy_stream(), ctx.compute_stream());
    let fail = ctx.fail(op);
    // 1. The kernel's private inputs, once the slot's last kernel has read them.
    if slot.used {
        copy.wait(&slot.ready).map_err(&fail)?;
    }
    let tokens: &[u32] = bytemuck::cast_slice(p.staged.tokens.as_bytes());
    let pieces: &[u32] = bytemuck::cast_slice(p.pieces.as_bytes());
    let mut uploaded = 0;
    uploaded += put(copy, tokens, &mut slot.tokens).map_err(&fail)?;
    uploaded += put(copy, &p.staged.offsets, &mut slot.offsets).map_err(&fail)?;
    uploaded += put(copy, &p.row_pieces, &mut slot.row_pieces).map_err(&fail)?;
    uploaded += put(copy, pieces, &mut slot.pieces).map_err(&fail)?;
    slot.copied.record(copy).map_err(&fail)?;
    // 2. After those copies and the slot's last consumer: the fields the consumer sees as they
    //    are, then the kernel.
    compute.wait(&slot.copied).map_err(&fail)?;
    if slot.used {
        compute.wait(&slot.released).map_err(&fail)?;
    }
    let cu: &[i32] = p.cu_seqlens.as_deref().unwrap_or(&[]);
    uploaded += put(compute, &p.lengths, &mut slot.lengths).map_err(&fail)?;
    uploaded += put(compute, cu, &mut slot.cu_seqlens).map_err(&fail)?;
    let [pad, ignore, fields] = RaggedBatch::<T>::kernel_words(config);
    launch_pad_collate(
        ctx,
        compute,
        PadCollateArgs {
            rows: p.staged.rows,
            width: p.staged.width,
            pad,
            ignore,
            fields,
            tokens: &slot.tokens,
            offsets: &slot.offsets,
            row_pieces: &slot.row_pieces,
            pieces: &slot.pieces,
            ids: &mut slot.ids,
            mask: &mut slot.mask,
            labels: &mut slot.labels,
            positions: &mut slot.positions,
        },
    )?;
    slot.ready.record(compute).map_err(&fail)?;
    Ok(uploaded)
}

/// The sink's staging memory: the context's page-locked memory, as a pool's source.
struct PinnedStaging(PinnedMemory);

// SAFETY: `allocate` hands out only memory fresh from `PinnedMemory::allocate`: at least `bytes`
// bytes, zeroed, owned by the caller until released; a pointer not 64-byte aligned (the driver
// gives page-aligned memory, so never in practice) is given back and `None` returned.
unsafe impl HostMemory for PinnedStaging {
    fn name(&self) -> &str {
        "cuda pinned"
    }

    fn allocate(&self, bytes: usize) -> Option<NonNull<u8>> {
        let ptr = self.0.allocate(bytes)?;
        if !(ptr.as_ptr() as usize).is_multiple_of(64) {
            // SAFETY: just allocated by this memory, never handed out.
            unsafe { self.0.release(ptr) };
            return None;
        }
        Some(ptr)
    }

    unsafe fn release(&self, ptr: NonNull<u8>, _bytes: usize) {
        // SAFETY: the pool's contract: `ptr` came from `allocate` above (so from
        // `PinnedMemory::allocate`) and is not used afterwards.
        unsafe { self.0.release(ptr) }
    }
}

/// Queues a copy of `src` to the start of `dst` on `stream`; the bytes copied.
fn put<E: DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: &[E],
    dst: &mut CudaSlice<E>,
) -> std::result::Result<u64, cudarc::driver::DriverError> {
    if src.is_empty() {
        return Ok(0);
    }
    stream.memcpy_htod(src, &mut dst.slice_mut(..src.len()))?;
    Ok(size_of_val(src) as u64)
}

/// The pinned buffers of an upload, kept until its copies are done.
type Staging = Box<dyn Send + Sync>;

/// One batch's device buffers and events, recycled from batch to batch.
struct Slot {
    ctx: Arc<CudaContext>,
    sizes: SlotSizes,
    tokens: CudaSlice<u32>,
    offsets: CudaSlice<u32>,
    row_pieces: CudaSlice<u32>,
    /// (start, length) pairs.
    pieces: CudaSlice<u32>,
    lengths: CudaSlice<u32>,
    cu_seqlens: CudaSlice<i32>,
    ids: CudaSlice<u32>,
    mask: CudaSlice<u8>,
    labels: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    /// Recorded on the copy stream after the copies of the kernel's inputs; streams wait for
    /// it (no timing, no blocking sync: the cheapest event to wait for on a stream).
    copied: CudaEvent,
    /// Recorded on the compute stream after the kernel, so after every copy of the batch: the
    /// host waits for it (a blocking-sync event).
    ready: CudaEvent,
    /// Recorded on the consumer's stream when the batch is dropped; streams wait for it and the
    /// host only queries it.
    released: CudaEvent,
    /// Whether `released` has been recorded (the slot has had a batch).
    used: bool,
    staging: Option<Staging>,
    /// The stream of the last batch's consumer: `released` is recorded there when the batch is
    /// dropped.
    consumer: Arc<CudaStream>,
}

impl super::slots::Slot for Slot {
    const BUFFERS: u64 = 10;

    fn sizes(&self) -> &SlotSizes {
        &self.sizes
    }

    /// The consumer is done with the slot (and so the kernel and every copy before it). A
    /// driver error counts as done: the reuse then reports it.
    fn idle(&self) -> bool {
        // cudarc's query does not make the context current on this thread; the upload's other
        // calls do, but this one comes first.
        if self.ctx.driver().bind_to_thread().is_err() {
            return true;
        }
        [&self.released, &self.ready]
            .iter()
            .all(|e| e.try_is_complete().unwrap_or(true))
    }

    /// The slot's pinned staging goes back to the pool once its copies are done (at once for an
    /// idle slot; a busy one is waited for, asleep); the device orders the rest (see
    /// [`queue`]).
    fn reuse(&mut self) -> Result<()> {
        if self.staging.is_some() {
            self.ready
                .synchronize()
                .map_err(self.ctx.fail("wait for a slot's copies"))?;
            self.staging = None;
        }
        Ok(())
    }

    /// The slot is reused only after the consumer's work so far. Should recording fail (a
    /// lost device), the slot is dropped rather than reused unordered.
    fn release(&mut self) -> bool {
        self.released.record(&self.consumer).is_ok()
    }
}

impl Slot {
    fn new(ctx: &Arc<CudaContext>, sizes: SlotSizes) -> Result<Self> {
        let stream = ctx.copy_stream();
        let fail = ctx.fail("create batch buffers");
        // Each `alloc` below: the buffers are written before they are read: inputs by the
        // copies, outputs by the kernel, and only the written prefixes are ever exposed. None
        // is of zero bytes (the driver refuses those): each holds at least one element.
        // SAFETY: as above.
        let u32s = |n: usize| unsafe { stream.alloc::<u32>(n.max(1)) };
        let event = || ctx.driver().new_event(None);
        let host_event = || ctx.host_event();
        Ok(Slot {
            ctx: ctx.clone(),
            sizes,
            tokens: u32s(sizes.tokens).map_err(&fail)?,
            offsets: u32s(sizes.rows + 1).map_err(&fail)?,
            row_pieces: u32s(sizes.rows + 1).map_err(&fail)?,
            pieces: u32s(2 * sizes.pieces).map_err(&fail)?,
            lengths: u32s(sizes.rows).map_err(&fail)?,
            // SAFETY: written by the kernel before it is read, as above.
            cu_seqlens: unsafe { stream.alloc::<i32>(sizes.pieces + 1) }.map_err(&fail)?,
            ids: u32s(sizes.cells).map_err(&fail)?,
            // SAFETY: written by the kernel before it is read, as above.
            mask: unsafe { stream.alloc::<u8>(sizes.cells.max(1)) }.map_err(&fail)?,
            labels: u32s(sizes.cells).map_err(&fail)?,
            positions: u32s(sizes.cells).map_err(&fail)?,
            copied: event().map_err(&fail)?,
            ready: host_event().map_err(&fail)?,
            released: event().map_err(&fail)?,
            used: false,
            staging: None,
            consumer: ctx.compute_stream().clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The buffers are freed in the copy stream's order: after the last consumer's work.
        if self.used {
            let _ = self.tokens.stream().wait(&self.released);
        }
        // The pinned staging goes back to the pool only once the copies have read it.
        if self.staging.is_some() {
            let _ = self.ready.synchronize();
        }
    }
}

/// A device buffer holding one field of a batch: its first `len` elements (the buffer may be
/// larger: slots are sized for the largest batch).
#[derive(Debug)]
pub struct CudaField<'a, E> {
    /// The buffer.
    pub buffer: &'a CudaSlice<E>,
    /// The field's shape: `[B, T]`, `[B]` or `[segments + 1]`.
    pub shape: [usize; 2],
    /// How many of the shape's dimensions are real (1 or 2).
    pub dims: usize,
    /// The element type: `i32`, `u32` or `u8` (ids hold `T`'s bits in u32 elements).
    pub dtype: &'static str,
    /// Elements of the field.
    pub len: usize,
}

/// A batch in CUDA device buffers. Its fields are written by work that may still be running:
/// [`CudaBatch::ready`] is recorded after it on the sink's compute stream
/// ([`CudaContext::compute_stream`]), which work on that stream follows by itself.
///
/// **A consumer that uses the batch on a stream of its own must call [`CudaBatch::use_on`]
/// with that stream first.** Without it, its kernels may read the fields before they are
/// written, and the slot may be rewritten for a later batch while they still read it: the sink
/// orders the reuse of a slot after the consumer's stream only, the compute stream unless
/// `use_on` names another. Only the last stream given to `use_on` counts as the consumer: a
/// step spread over several streams joins them into that one before the batch is dropped.
///
/// The buffers stay this batch's until it is dropped, and are rewritten only after the
/// consumer's stream has passed that point (the host never waits for it).
pub struct CudaBatch<T: TokenId> {
    ctx: Arc<CudaContext>,
    slot: Lease<Slot>,
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

impl<T: TokenId> std::fmt::Debug for CudaBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBatch")
            .field("step", &self.step)
            .field("rows", &self.rows)
            .field("width", &self.width)
            .finish()
    }
}

impl<T: TokenId> CudaBatch<T> {
    fn slot(&self) -> &Slot {
        &self.slot
    }

    fn field<'a, E>(&'a self, field: Field, buffer: &'a CudaSlice<E>) -> Option<CudaField<'a, E>> {
        let shape = self.fields.shape::<T>(field)?;
        Some(CudaField {
            buffer,
            shape: shape.shape,
            dims: shape.dims,
            dtype: shape.dtype,
            len: shape.len,
        })
    }

    /// Token ids `[B, T]` (the bits of `T` in u32 elements).
    pub fn ids(&self) -> CudaField<'_, u32> {
        self.field(Field::Ids, &self.slot().ids)
            .expect("every batch has ids")
    }

    /// The attention mask `[B, T]`, one byte per element, when the collate config asks for it.
    pub fn attention_mask(&self) -> Option<CudaField<'_, u8>> {
        self.field(Field::AttentionMask, &self.slot().mask)
    }

    /// Labels `[B, T]`, when the collate config asks for them.
    pub fn labels(&self) -> Option<CudaField<'_, u32>> {
        self.field(Field::Labels, &self.slot().labels)
    }

    /// Position ids `[B, T]`, when the collate config asks for them.
    pub fn position_ids(&self) -> Option<CudaField<'_, u32>> {
        self.field(Field::PositionIds, &self.slot().positions)
    }

    /// Real tokens per row `[B]` (u32).
    pub fn lengths(&self) -> CudaField<'_, u32> {
        self.field(Field::Lengths, &self.slot().lengths)
            .expect("every batch has lengths")
    }

    /// Document boundaries over the real tokens `[segments + 1]` (i32), for packed batches.
    pub fn cu_seqlens(&self) -> Option<CudaField<'_, i32>> {
        self.field(Field::CuSeqlens, &self.slot().cu_seqlens)
    }

    /// The event recorded after the batch's kernel: a stream that waits for it sees every field
    /// written.
    pub fn ready(&self) -> &CudaEvent {
        &self.slot().ready
    }

    /// The event recorded on the copy stream after the batch's host-to-device copies of the
    /// kernel's inputs: for measuring copy/compute overlap (`scripts/gpu-check`), not for
    /// ordering a consumer (use [`CudaBatch::ready`]). Its host wait spins (no blocking sync).
    pub fn copied(&self) -> &CudaEvent {
        &self.slot().copied
    }

    /// Makes `stream` the batch's consumer: it waits for [`CudaBatch::ready`], and the slot is
    /// reused only after the work `stream` holds when the batch is dropped. Required before
    /// the batch is used on any stream but the context's compute stream (see [`CudaBatch`]).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] when `stream` belongs to another context (another device, or
    /// another context of this one), or the driver refuses the wait.
    pub fn use_on(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        if !Arc::ptr_eq(stream.context(), self.ctx.driver()) {
            // Its `released` event could not be recorded there: the slot would be reused
            // while that stream may still read it.
            return Err(self.ctx.error(
                "use a batch on a stream",
                format!(
                    "the stream belongs to cuda:{}, not to this batch's context: copy the \
                     batch to that device first",
                    stream.context().ordinal()
                ),
            ));
        }
        stream
            .wait(self.ready())
            .map_err(self.ctx.fail("wait for a batch"))?;
        self.slot.consumer = stream.clone();
        Ok(())
    }

    /// The context whose device holds the batch.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Blocks the host until the device has written the batch, asleep (a blocking-sync event),
    /// not spinning a core.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] with the driver's reason.
    pub fn wait(&self) -> Result<()> {
        self.ready()
            .synchronize()
            .map_err(self.ctx.fail("wait for a batch"))
    }

    /// Copies the batch back into a host [`Batch`], field for field: for tests and debugging.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] naming the operation.
    pub fn to_host(&self) -> Result<Batch<T>> {
        let op = "read a batch back";
        let fail = self.ctx.fail(op);
        let stream = self.ctx.compute_stream();
        stream.wait(self.ready()).map_err(&fail)?;
        let slot = self.slot();
        // The copies write into pooled pinned buffers: the settle waits for them before any
        // buffer is handed out, or dropped back to the pool after an error.
        self.fields.host_batch_settled(
            self.step,
            &self.docs,
            &self.pool,
            |field, out| {
                match field {
                    Field::Ids => get(stream, &slot.ids, words(out)),
                    Field::Lengths => get(stream, &slot.lengths, words(out)),
                    Field::AttentionMask => get(stream, &slot.mask, out),
                    Field::Labels => get(stream, &slot.labels, words(out)),
                    Field::PositionIds => get(stream, &slot.positions, words(out)),
                    Field::CuSeqlens => {
                        get(stream, &slot.cu_seqlens, bytemuck::cast_slice_mut(out))
                    }
                }
                .map_err(&fail)
            },
            || self.ctx.synchronize(stream, op),
        )
    }
}

/// `out` as u32 words (pooled buffers are 64-byte aligned: any element type casts).
fn words(out: &mut [u8]) -> &mut [u32] {
    bytemuck::cast_slice_mut(out)
}

/// Queues a copy of the first `dst.len()` elements of `src` into `dst` on `stream` (the caller
/// synchronizes before reading `dst`).
fn get<E: DeviceRepr>(
    stream: &Arc<CudaStream>,
    src: &CudaSlice<E>,
    dst: &mut [E],
) -> std::result::Result<(), cudarc::driver::DriverError> {
    if dst.is_empty() {
        return Ok(());
    }
    stream.memcpy_dtoh(&src.slice(..dst.len()), dst)
}

impl<T: TokenId> DeviceBatch<T> for CudaBatch<T> {
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
        CudaBatch::wait(self)
    }

    fn to_host(&self) -> Result<Batch<T>> {
        CudaBatch::to_host(self)
    }
}
