//! What the device sinks share: a batch's ragged ids with the small index arrays the pad kernels
//! read ([`RaggedBatch`], built on the workers), the recycling of slots of device buffers
//! ([`Slots`], [`Lease`]) with the element counts a slot must hold, the sinks' counters, and the
//! fields of a padded batch on a device.

use std::sync::{Arc, Mutex, MutexGuard};

use super::SinkStats;
use crate::collate::{
    Batch, CollateConfig, DocRef, PIECES_PER_ROW, Pool, PooledBuf, StagedBatch, cu_seqlens,
};
use crate::error::Result;
use crate::shard::TokenId;

/// A staged batch and the index arrays the device's pad kernel reads, all in the sink's staging
/// memory: what a worker prepares for the upload. Only these cross the bus.
///
/// Crate-internal: `pub` only because it is the device sinks' [`super::DeviceSink::Prepared`]
/// type; no public path names it.
pub struct RaggedBatch<T: TokenId> {
    /// The ragged ids, row offsets and document pieces.
    pub staged: StagedBatch<T>,
    /// For each row, the index of its first non-empty piece; `rows + 1` entries.
    pub row_pieces: PooledBuf<u32>,
    /// Each non-empty piece as (start column, length), sorted by start within each row.
    pub pieces: PooledBuf<[u32; 2]>,
    /// Real tokens per row.
    pub lengths: PooledBuf<u32>,
    /// Document boundaries over the real tokens, for packed batches.
    pub cu_seqlens: Option<PooledBuf<i32>>,
}

impl<T: TokenId> RaggedBatch<T> {
    /// Builds the index arrays of `staged` from `pool`.
    pub(crate) fn new(staged: StagedBatch<T>, pool: &Pool) -> Self {
        let rows = staged.rows;
        let mut row_pieces = pool.take::<u32>(rows + 1);
        let mut pieces = pool.take_within::<[u32; 2]>(staged.docs.len(), PIECES_PER_ROW * rows);
        let mut lengths = pool.take::<u32>(rows);
        // Empty pieces (dropped or skipped documents) label and position nothing: the kernel
        // gets the others only, sorted by start within each row as the collator made them.
        let (mut next, mut kept) = (0, 0);
        for r in 0..rows {
            row_pieces[r] = kept as u32;
            while next < staged.docs.len() && staged.docs[next].row as usize == r {
                let d = &staged.docs[next];
                if d.len > 0 {
                    pieces[kept] = [d.start, d.len];
                    kept += 1;
                }
                next += 1;
            }
            lengths[r] = staged.offsets[r + 1] - staged.offsets[r];
        }
        row_pieces[rows] = kept as u32;
        pieces.truncate(kept);
        let cu_seqlens = staged.packed.then(|| cu_seqlens(&staged.docs, rows, pool));
        RaggedBatch {
            staged,
            row_pieces,
            pieces,
            lengths,
            cu_seqlens,
        }
    }

    /// The element counts this batch needs, and those of the largest batch `config` allows
    /// with as many rows (a new slot is sized for that, so later batches fit it too).
    pub(crate) fn sizes(&self, config: &CollateConfig) -> (SlotSizes, SlotSizes) {
        let s = &self.staged;
        let rows = s.rows;
        let need = SlotSizes {
            tokens: s.tokens.len(),
            rows,
            pieces: self.pieces.len(),
            cells: rows * s.width,
        };
        let widest = rows * config.seq_len.max(s.width);
        let bound = SlotSizes {
            tokens: widest,
            rows,
            pieces: PIECES_PER_ROW * rows,
            cells: widest,
        };
        (need, bound)
    }

    /// The bits of the pad id and the ignore id, as 4-byte kernels hold them, and the fields
    /// word (bit 0 the mask, bit 1 labels, bit 2 position ids).
    pub(crate) fn kernel_words(config: &CollateConfig) -> [u32; 3] {
        let pad = config.pad_value::<T>();
        let fields = config.attention_mask as u32
            | (config.labels as u32) << 1
            | (config.position_ids as u32) << 2;
        [bits(pad), bits(T::IGNORE), fields]
    }

    /// Counts an upload of this batch into `stats`: `uploaded` bytes crossed, against what a
    /// host-padded batch would have sent.
    pub(crate) fn count(&self, stats: &mut SinkStats, uploaded: u64, config: &CollateConfig) {
        let cells = (self.staged.rows * self.staged.width) as u64;
        let padded_fields = 4
            + config.attention_mask as u64
            + 4 * config.labels as u64
            + 4 * config.position_ids as u64;
        let cu = self.cu_seqlens.as_ref().map_or(0, |c| c.as_bytes().len()) as u64;
        stats.uploads += 1;
        stats.bytes_uploaded += uploaded;
        stats.padded_bytes += cells * padded_fields + self.lengths.as_bytes().len() as u64 + cu;
    }
}

/// The bits of a 4-byte id, as the kernels hold it (callers refuse other id widths first).
fn bits<T: TokenId>(t: T) -> u32 {
    let bytes = bytemuck::bytes_of(&t);
    u32::from_le_bytes(bytes[..4].try_into().expect("a 4-byte id"))
}

/// Element counts a slot of device buffers holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotSizes {
    pub tokens: usize,
    pub rows: usize,
    pub pieces: usize,
    pub cells: usize,
}

impl SlotSizes {
    /// The counts of the largest batch of `rows` rows `config` allows (saturating: a sink checks
    /// them against its device's limits when it is bound).
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    pub fn widest(config: &CollateConfig, rows: usize) -> SlotSizes {
        let widest = rows.saturating_mul(config.max_width().unwrap_or(usize::MAX));
        SlotSizes {
            tokens: widest,
            rows,
            pieces: PIECES_PER_ROW.saturating_mul(rows),
            cells: widest,
        }
    }

    pub fn holds(&self, need: &SlotSizes) -> bool {
        self.tokens >= need.tokens
            && self.rows >= need.rows
            && self.pieces >= need.pieces
            && self.cells >= need.cells
    }

    pub fn max(&self, other: &SlotSizes) -> SlotSizes {
        SlotSizes {
            tokens: self.tokens.max(other.tokens),
            rows: self.rows.max(other.rows),
            pieces: self.pieces.max(other.pieces),
            cells: self.cells.max(other.cells),
        }
    }
}

/// One batch's device buffers, recycled from batch to batch by [`Slots`].
pub(crate) trait Slot: Send + Sized + 'static {
    /// Device buffers in a slot.
    const BUFFERS: u64;

    /// The element counts the slot holds.
    fn sizes(&self) -> &SlotSizes;

    /// Readies a free slot for another batch: returns once the device's last use of it (and of
    /// the staging memory it keeps) is done.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`] when the device is lost.
    fn reuse(&mut self) -> Result<()>;

    /// Called when the batch holding the slot is dropped: whether the slot may be reused (a slot
    /// whose release cannot be ordered on the device is dropped instead).
    fn release(&mut self) -> bool {
        true
    }
}

/// A device sink's slots of device buffers and its counters. A slot is lent to one batch
/// ([`Lease`]) and comes back when the batch is dropped; an upload takes a free slot that fits
/// its batch, or makes one sized for the largest batch, so a steady stream makes two slots (the
/// batch the caller holds, the one being written) and then none.
pub(crate) struct Slots<S: Slot> {
    free: Arc<Mutex<Vec<S>>>,
    stats: Mutex<SinkStats>,
}

impl<S: Slot> Default for Slots<S> {
    fn default() -> Self {
        Slots {
            free: Arc::new(Mutex::new(Vec::new())),
            stats: Mutex::new(SinkStats::default()),
        }
    }
}

impl<S: Slot> Slots<S> {
    /// Counters so far.
    pub fn stats(&self) -> SinkStats {
        *self.stats_mut()
    }

    /// The counters, to add an upload to.
    pub fn stats_mut(&self) -> MutexGuard<'_, SinkStats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free slot that fits `need`, readied for reuse; or a new one from `make`, sized for
    /// `need` and `bound` together (later batches fit it too).
    ///
    /// # Errors
    ///
    /// What [`Slot::reuse`] or `make` returns.
    pub fn acquire(
        &self,
        need: &SlotSizes,
        bound: &SlotSizes,
        make: impl FnOnce(SlotSizes) -> Result<S>,
    ) -> Result<Lease<S>> {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            let found = free.iter().position(|s| s.sizes().holds(need));
            if found.is_none() {
                // Free slots too small for this batch go; the new one fits the largest batch.
                free.clear();
            }
            found.map(|i| free.swap_remove(i))
        };
        let slot = match reused {
            Some(mut slot) => {
                slot.reuse()?;
                slot
            }
            None => {
                let slot = make(need.max(bound))?;
                let mut stats = self.stats_mut();
                stats.slots_created += 1;
                stats.buffers_created += S::BUFFERS;
                slot
            }
        };
        Ok(Lease {
            slot: Some(slot),
            home: self.free.clone(),
        })
    }
}

/// A slot lent to one batch; it goes back to its sink's free slots when dropped (if
/// [`Slot::release`] allows).
pub(crate) struct Lease<S: Slot> {
    /// Always `Some` until dropped.
    slot: Option<S>,
    home: Arc<Mutex<Vec<S>>>,
}

impl<S: Slot> std::ops::Deref for Lease<S> {
    type Target = S;

    fn deref(&self) -> &S {
        self.slot
            .as_ref()
            .expect("a lease holds its slot until dropped")
    }
}

impl<S: Slot> std::ops::DerefMut for Lease<S> {
    fn deref_mut(&mut self) -> &mut S {
        self.slot
            .as_mut()
            .expect("a lease holds its slot until dropped")
    }
}

impl<S: Slot> Drop for Lease<S> {
    fn drop(&mut self) {
        if let Some(mut slot) = self.slot.take()
            && slot.release()
        {
            self.home
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(slot);
        }
    }
}

/// The error for ids the 4-byte pad kernels cannot hold.
pub(crate) fn four_byte_ids<T: TokenId>() -> std::result::Result<(), String> {
    if size_of::<T>() == 4 {
        Ok(())
    } else {
        Err(format!(
            "the device pad kernels take 4-byte ids; use i32 or u32 ids, not {}",
            T::NAME
        ))
    }
}

/// A field of a padded batch on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// Token ids `[B, T]`.
    Ids,
    /// Real tokens per row `[B]` (u32).
    Lengths,
    /// The attention mask `[B, T]`, one byte per element.
    AttentionMask,
    /// Labels `[B, T]`.
    Labels,
    /// Position ids `[B, T]`.
    PositionIds,
    /// Document boundaries over the real tokens `[segments + 1]` (i32), packed batches only.
    CuSeqlens,
}

impl Field {
    /// Every field, in the order host batches list them.
    pub const ALL: [Field; 6] = [
        Field::Ids,
        Field::Lengths,
        Field::AttentionMask,
        Field::Labels,
        Field::PositionIds,
        Field::CuSeqlens,
    ];
}

/// A field's shape in a device batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldShape {
    /// `[B, T]`, `[B, 1]` or `[segments + 1, 1]`.
    pub shape: [usize; 2],
    /// How many of the shape's dimensions are real (1 or 2).
    pub dims: usize,
    /// The element type: the id type's name, `u32`, `i32` or `u8`.
    pub dtype: &'static str,
    /// Elements.
    pub len: usize,
    /// Bytes.
    pub bytes: u64,
}

/// Which fields a device batch holds, and its shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FieldSet {
    pub rows: usize,
    pub width: usize,
    mask: bool,
    labels: bool,
    positions: bool,
    cu_seqlens: Option<usize>,
}

impl FieldSet {
    /// The fields of a `rows x width` batch collated under `config`, with `cu_seqlens` entries
    /// when packed.
    pub fn new(
        config: &CollateConfig,
        rows: usize,
        width: usize,
        cu_seqlens: Option<usize>,
    ) -> Self {
        FieldSet {
            rows,
            width,
            mask: config.attention_mask,
            labels: config.labels,
            positions: config.position_ids,
            cu_seqlens,
        }
    }

    /// The shape of `field` with `T` ids; `None` when the batch does not hold it.
    pub fn shape<T: TokenId>(&self, field: Field) -> Option<FieldShape> {
        let grid = |dtype: &'static str, size: usize| FieldShape {
            shape: [self.rows, self.width],
            dims: 2,
            dtype,
            len: self.rows * self.width,
            bytes: (self.rows * self.width * size) as u64,
        };
        let line = |n: usize, dtype: &'static str| FieldShape {
            shape: [n, 1],
            dims: 1,
            dtype,
            len: n,
            bytes: n as u64 * 4,
        };
        let id = size_of::<T>();
        match field {
            Field::Ids => Some(grid(T::NAME, id)),
            Field::Lengths => Some(line(self.rows, "u32")),
            Field::AttentionMask => self.mask.then(|| grid("u8", 1)),
            Field::Labels => self.labels.then(|| grid(T::NAME, id)),
            Field::PositionIds => self.positions.then(|| grid(T::NAME, id)),
            Field::CuSeqlens => self.cu_seqlens.map(|n| line(n, "i32")),
        }
    }

    /// A host [`Batch`] of step `step` whose fields `fill` writes (each as bytes, in
    /// [`Field::ALL`] order), from `pool`, with a copy of `docs`.
    ///
    /// # Errors
    ///
    /// What `fill` returns.
    pub fn host_batch<T: TokenId>(
        &self,
        step: u64,
        docs: &[DocRef],
        pool: &Pool,
        mut fill: impl FnMut(Field, &mut [u8]) -> Result<()>,
    ) -> Result<Batch<T>> {
        fn take<E: bytemuck::Pod>(
            pool: &Pool,
            len: usize,
            field: Field,
            fill: &mut impl FnMut(Field, &mut [u8]) -> Result<()>,
        ) -> Result<PooledBuf<E>> {
            let mut buf = pool.take::<E>(len);
            fill(field, bytemuck::cast_slice_mut(&mut buf[..]))?;
            Ok(buf)
        }
        let cells = self.rows * self.width;
        let ids = take::<T>(pool, cells, Field::Ids, &mut fill)?;
        let lengths = take::<u32>(pool, self.rows, Field::Lengths, &mut fill)?;
        let attention_mask = self
            .mask
            .then(|| take::<u8>(pool, cells, Field::AttentionMask, &mut fill))
            .transpose()?;
        let labels = self
            .labels
            .then(|| take::<T>(pool, cells, Field::Labels, &mut fill))
            .transpose()?;
        let position_ids = self
            .positions
            .then(|| take::<T>(pool, cells, Field::PositionIds, &mut fill))
            .transpose()?;
        let cu_seqlens = self
            .cu_seqlens
            .map(|n| take::<i32>(pool, n, Field::CuSeqlens, &mut fill))
            .transpose()?;
        let mut copy = pool.take::<DocRef>(docs.len());
        copy.copy_from_slice(docs);
        Ok(Batch {
            step,
            rows: self.rows,
            width: self.width,
            ids,
            lengths,
            attention_mask,
            labels,
            position_ids,
            cu_seqlens,
            docs: copy,
        })
    }
}
