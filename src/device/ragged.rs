//! What the device sinks share: a batch's ragged ids with the small index arrays the pad kernels
//! read ([`RaggedBatch`], built on the workers), the element counts a slot of device buffers
//! must hold ([`SlotSizes`]; the slots themselves are recycled by [`Slots`]), and the fields of
//! a padded batch on a device.

use super::SinkStats;
// The wgpu sink names the slot types through this module.
#[cfg(feature = "wgpu")]
pub(crate) use super::slots::{Lease, Slot, Slots};
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
        // (`kept as u32` cannot wrap for a batch that reaches a kernel: the sinks refuse
        // batches with more than u32::MAX / 2 pieces, `SlotSizes::check_u32`.)
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
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
    pub fn widest(config: &CollateConfig, rows: usize) -> SlotSizes {
        let widest = rows.saturating_mul(config.max_width().unwrap_or(usize::MAX));
        SlotSizes {
            tokens: widest,
            rows,
            pieces: PIECES_PER_ROW.saturating_mul(rows),
            cells: widest,
        }
    }

    /// Checks the counts against the pad kernels' 32-bit indexes: the kernels take rows,
    /// columns, ragged ids and pieces as u32 arguments, the row offsets are u32, and a piece is
    /// two u32 words. The error names the first count past `u32::MAX` (a caller adds the
    /// operation and the advice).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn check_u32(&self) -> std::result::Result<(), String> {
        let max = u128::from(u32::MAX);
        let counts = [
            ("row offsets (rows + 1)", self.rows as u128 + 1),
            ("ragged ids", self.tokens as u128),
            ("piece words (2 per piece)", 2 * self.pieces as u128),
            ("cells (rows x columns)", self.cells as u128),
        ];
        match counts.iter().find(|(_, n)| *n > max) {
            Some((name, n)) => Err(format!(
                "{n} {name} pass the pad kernel's 32-bit limit of {max}"
            )),
            None => Ok(()),
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
    #[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
    pub fn host_batch<T: TokenId>(
        &self,
        step: u64,
        docs: &[DocRef],
        pool: &Pool,
        fill: impl FnMut(Field, &mut [u8]) -> Result<()>,
    ) -> Result<Batch<T>> {
        self.host_batch_settled(step, docs, pool, fill, || Ok(()))
    }

    /// [`FieldSet::host_batch`] for a `fill` that only queues writes into the buffers
    /// (asynchronous device-to-host copies): `settle` waits for them. It runs once, after every
    /// field is queued or the first one fails, and before any buffer is handed out or dropped,
    /// so that no copy writes into memory the pool has given to someone else.
    ///
    /// # Errors
    ///
    /// What `fill` returns (the first error), else what `settle` returns.
    pub fn host_batch_settled<T: TokenId>(
        &self,
        step: u64,
        docs: &[DocRef],
        pool: &Pool,
        mut fill: impl FnMut(Field, &mut [u8]) -> Result<()>,
        settle: impl FnOnce() -> Result<()>,
    ) -> Result<Batch<T>> {
        /// Takes the field's buffer into `out` first, so that it outlives a failed `fill`.
        fn put<E: bytemuck::Pod>(
            out: &mut Option<PooledBuf<E>>,
            pool: &Pool,
            len: usize,
            field: Field,
            fill: &mut impl FnMut(Field, &mut [u8]) -> Result<()>,
        ) -> Result<()> {
            let buf = out.insert(pool.take::<E>(len));
            fill(field, bytemuck::cast_slice_mut(&mut buf[..]))
        }
        let cells = self.rows * self.width;
        let mut ids = None;
        let mut lengths = None;
        let mut attention_mask = None;
        let mut labels = None;
        let mut position_ids = None;
        let mut cu = None;
        let filled = (|| {
            put::<T>(&mut ids, pool, cells, Field::Ids, &mut fill)?;
            put::<u32>(&mut lengths, pool, self.rows, Field::Lengths, &mut fill)?;
            if self.mask {
                put::<u8>(
                    &mut attention_mask,
                    pool,
                    cells,
                    Field::AttentionMask,
                    &mut fill,
                )?;
            }
            if self.labels {
                put::<T>(&mut labels, pool, cells, Field::Labels, &mut fill)?;
            }
            if self.positions {
                put::<T>(
                    &mut position_ids,
                    pool,
                    cells,
                    Field::PositionIds,
                    &mut fill,
                )?;
            }
            if let Some(n) = self.cu_seqlens {
                put::<i32>(&mut cu, pool, n, Field::CuSeqlens, &mut fill)?;
            }
            Ok(())
        })();
        let settled = settle();
        filled?;
        settled?;
        let mut copy = pool.take::<DocRef>(docs.len());
        copy.copy_from_slice(docs);
        Ok(Batch {
            step,
            rows: self.rows,
            width: self.width,
            ids: ids.expect("filled above"),
            lengths: lengths.expect("filled above"),
            attention_mask,
            labels,
            position_ids,
            cu_seqlens: cu,
            docs: copy,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn counts_past_the_kernels_32_bit_indexes_are_refused_by_name() {
        let ok = SlotSizes {
            tokens: u32::MAX as usize,
            rows: u32::MAX as usize - 1,
            pieces: (u32::MAX / 2) as usize,
            cells: u32::MAX as usize,
        };
        assert_eq!(ok.check_u32(), Ok(()));
        let cases = [
            (
                SlotSizes {
                    rows: u32::MAX as usize,
                    ..ok
                },
                "row offsets",
            ),
            (
                SlotSizes {
                    tokens: 1 << 32,
                    ..ok
                },
                "4294967296 ragged ids",
            ),
            (
                SlotSizes {
                    pieces: 1 << 31,
                    ..ok
                },
                "piece words",
            ),
            (
                SlotSizes {
                    cells: usize::MAX,
                    ..ok
                },
                "cells (rows x columns) pass the pad kernel's 32-bit limit of 4294967295",
            ),
        ];
        for (sizes, name) in cases {
            let e = sizes.check_u32().unwrap_err();
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn a_failed_readback_settles_before_any_buffer_goes_back_to_the_pool() {
        use crate::collate::{CollateConfig, Padding};
        let config = CollateConfig {
            seq_len: 8,
            padding: Padding::Fixed,
            labels: true,
            ..Default::default()
        };
        let fields = FieldSet::new(&config, 2, 8, None);
        let pool = Pool::new();
        let idle = |pool: &Pool| pool.stats().idle;
        let filled = Mutex::new(Vec::new());
        let e = fields
            .host_batch_settled::<u32>(
                3,
                &[],
                &pool,
                |field, _| {
                    filled.lock().unwrap().push(field);
                    if field == Field::Labels {
                        return Err(crate::Error::Config("copy failed".into()));
                    }
                    Ok(())
                },
                || {
                    // Every buffer a copy was queued into is still held, none back in the pool.
                    assert_eq!(idle(&pool), 0);
                    Ok(())
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("copy failed"), "{e}");
        let filled = filled.into_inner().unwrap();
        assert_eq!(
            filled,
            [
                Field::Ids,
                Field::Lengths,
                Field::AttentionMask,
                Field::Labels
            ]
        );
        assert_eq!(idle(&pool), 4, "returned after the settle");
        // A failed settle fails the readback too.
        let e = fields
            .host_batch_settled::<u32>(
                0,
                &[],
                &pool,
                |_, _| Ok(()),
                || Err(crate::Error::Config("lost".into())),
            )
            .unwrap_err();
        assert!(e.to_string().contains("lost"), "{e}");
    }
}
