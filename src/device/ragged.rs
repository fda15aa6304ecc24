//! What the device sinks share: a batch's ragged ids with the small index arrays the pad kernels
//! read ([`RaggedBatch`], built on the workers), the element counts a recycled slot of device
//! buffers must hold, and the sinks' counters.

use crate::collate::{CollateConfig, PIECES_PER_ROW, Pool, PooledBuf, StagedBatch, cu_seqlens};
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

/// A staged batch and the index arrays the device's pad kernel reads, all in the sink's staging
/// memory: what a worker prepares for the upload. Only these cross the bus.
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
    pub fn new(staged: StagedBatch<T>, pool: &Pool) -> Self {
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
        let pad = T::try_from(config.pad_id).unwrap_or_default();
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
