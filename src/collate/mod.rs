//! Batches: padding and packing into a [`StagedBatch`] in pooled, aligned host memory, and the
//! host reference padding that turns it into a [`Batch`].
//!
//! A staged batch holds only the real tokens, row after row (ragged), with row offsets: that is
//! what crosses to a device. For the host sink ([`Layout::Padded`]) the collator plans the width
//! from the index and writes the ids in place, padding included, so no token is copied twice.
//! A [`Batch`] is the padded result every sink must produce exactly:
//!
//! | field | shape | content |
//! |---|---|---|
//! | `ids` | `[B, T]` | token ids, `pad_id` after each row's length |
//! | `lengths` | `[B]` | real tokens per row |
//! | `attention_mask` | `[B, T]` | 1 on real tokens, 0 on padding (optional) |
//! | `labels` | `[B, T]` | the next token of the same document, else the ignore id (optional) |
//! | `position_ids` | `[B, T]` | 0, 1, … per row, restarting at each document when packed (optional) |
//! | `cu_seqlens` | `[segments + 1]` | document boundaries over the real tokens, row-major (packed only) |
//! | `docs` | `[segments]` | per row piece: dataset, sample, epoch, where it sits |

mod pool;

pub use pool::*;

use crate::error::{Error, Result};
use crate::shard::TokenId;
use crate::transform::TransformConfig;

/// Packed pieces per row that staging memory is sized for (more still work; they allocate).
pub(crate) const PIECES_PER_ROW: usize = 8;

/// How rows are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// To the longest row of the batch.
    Longest,
    /// To the longest row, rounded up to a multiple of this. A row is never wider than the
    /// sequence length rounded up to the multiple ([`CollateConfig::max_width`]), which the
    /// loader checks against [`crate::loader::MAX_BATCH_TOKENS`].
    Multiple(usize),
    /// Always to the sequence length.
    Fixed,
}

/// How samples become a batch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CollateConfig {
    /// The longest row, T; samples are truncated to it (see the transform policies). When
    /// packing, every row holds exactly T tokens.
    pub seq_len: usize,
    /// How rows are padded (ignored when packing, which fills rows).
    pub padding: Padding,
    /// Concatenate documents (separated by the transform's EOS) and cut them into rows of T
    /// tokens; the cut remainder opens the next batch.
    pub pack: bool,
    /// The padding id.
    pub pad_id: i64,
    /// Emit the attention mask.
    pub attention_mask: bool,
    /// Emit labels: ids shifted by one within each document, the ignore id elsewhere.
    pub labels: bool,
    /// Emit position ids.
    pub position_ids: bool,
}

impl Default for CollateConfig {
    fn default() -> Self {
        CollateConfig {
            seq_len: 2048,
            padding: Padding::Longest,
            pack: false,
            pad_id: 0,
            attention_mask: true,
            labels: true,
            position_ids: true,
        }
    }
}

impl CollateConfig {
    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero sequence length or padding multiple.
    pub fn check(&self) -> Result<()> {
        if self.seq_len == 0 {
            return Err(Error::Config(
                "the sequence length must be at least 1".into(),
            ));
        }
        if self.padding == Padding::Multiple(0) {
            return Err(Error::Config(
                "the padding multiple must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The padding id as a `T` (the loader checks that it fits).
    pub(crate) fn pad_value<T: TokenId>(&self) -> T {
        T::try_from(self.pad_id).unwrap_or_default()
    }

    /// The padded width of a batch whose longest row holds `longest` tokens (`usize::MAX` when
    /// rounding up to the multiple overflows; [`CollateConfig::max_width`] tells beforehand).
    pub fn width(&self, longest: usize) -> usize {
        if self.pack {
            return self.seq_len;
        }
        match self.padding {
            Padding::Longest => longest.max(1),
            Padding::Multiple(m) => longest.max(1).div_ceil(m.max(1)).saturating_mul(m),
            Padding::Fixed => self.seq_len,
        }
    }

    /// The widest batch row: the sequence length, rounded up to the padding multiple when
    /// padding to one (rows of at most `seq_len` tokens pad to a multiple at or above it), or
    /// `None` when that does not fit `usize`. The loader checks that the local batch times this
    /// fits [`crate::loader::MAX_BATCH_TOKENS`].
    pub fn max_width(&self) -> Option<usize> {
        match self.padding {
            Padding::Multiple(m) if !self.pack => {
                self.seq_len.max(1).div_ceil(m.max(1)).checked_mul(m)
            }
            _ => Some(self.seq_len),
        }
    }

    /// Checks that the longest sample leaves room for at least one token besides the BOS and
    /// EOS of `transform`: its `max_len` (or, when padding, the sequence length, whichever is
    /// smaller) must exceed the tokens BOS and EOS add.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the lengths.
    pub fn check_room(&self, transform: &TransformConfig) -> Result<()> {
        let longest = match (self.pack, transform.max_len) {
            (true, cap) => cap,
            (false, cap) => Some(cap.map_or(self.seq_len, |c| c.min(self.seq_len))),
        };
        if let Some(longest) = longest.filter(|&l| l <= transform.extra()) {
            return Err(Error::Config(format!(
                "the longest sample, {longest} tokens (max_len {:?}, sequence length {}), leaves \
                 no room for content beside the {} BOS/EOS tokens",
                transform.max_len,
                self.seq_len,
                transform.extra()
            )));
        }
        Ok(())
    }
}

/// One piece of a document in a batch: a whole sample in a padded batch; in a packed batch, the
/// part of a document that falls in one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct DocRef {
    /// The sample index in its dataset.
    pub sample: u64,
    /// The dataset epoch of the draw.
    pub epoch: u64,
    /// The dataset, as an index into the loader's dataset names.
    pub dataset: u32,
    /// The row.
    pub row: u32,
    /// The column where the piece starts.
    pub start: u32,
    /// Tokens in the piece.
    pub len: u32,
    /// Where the piece starts within its transformed document (0 unless packing cut it).
    pub doc_offset: u32,
    /// [`DocRef::TRUNCATED`], [`DocRef::DROPPED`], [`DocRef::SKIPPED`].
    pub flags: u32,
    /// Tokens in the whole transformed document (equal to `len` unless packing cut it).
    pub doc_len: u32,
    /// Zero; keeps the layout free of padding.
    pub reserved: u32,
}

impl DocRef {
    /// Tokens were cut from the sample.
    pub const TRUNCATED: u32 = 1;
    /// The truncation policy dropped the sample: its row is empty.
    pub const DROPPED: u32 = 2;
    /// The sample failed and the skip policy skipped it: its row is empty.
    pub const SKIPPED: u32 = 4;
}

/// How a staged batch's tokens sit in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Real tokens only, row after row: row r is `tokens[offsets[r]..offsets[r + 1]]`. What
    /// crosses to a device.
    Ragged,
    /// `[rows, width]` with the padding id after each row: row r starts at `r * width`. What the
    /// host sink hands out as its ids, written once by the collator instead of staged and copied.
    Padded,
}

/// A collated batch in host staging memory, ready to cross to a device (ragged) or to become a
/// host batch (padded).
#[derive(Debug)]
pub struct StagedBatch<T: TokenId> {
    /// The step (global batch index) this batch belongs to.
    pub step: u64,
    /// Rows, B.
    pub rows: usize,
    /// The padded width T of this batch.
    pub width: usize,
    /// The tokens, as `layout` says.
    pub tokens: PooledBuf<T>,
    /// Real tokens before each row, cumulative: `rows + 1` entries (row starts in `tokens` when
    /// ragged).
    pub offsets: PooledBuf<u32>,
    /// The document pieces, in row order.
    pub docs: PooledBuf<DocRef>,
    /// Whether the batch was packed.
    pub packed: bool,
    /// How `tokens` is laid out.
    pub layout: Layout,
}

impl<T: TokenId> StagedBatch<T> {
    /// Real tokens in the batch.
    pub fn real_tokens(&self) -> usize {
        self.offsets[self.rows] as usize
    }

    /// Row `r`'s real tokens.
    pub fn row(&self, r: usize) -> &[T] {
        let len = (self.offsets[r + 1] - self.offsets[r]) as usize;
        let start = match self.layout {
            Layout::Ragged => self.offsets[r] as usize,
            Layout::Padded => r * self.width,
        };
        &self.tokens[start..start + len]
    }
}

/// A padded batch in host memory: the reference every device sink must match.
#[derive(Debug, PartialEq)]
pub struct Batch<T: TokenId> {
    /// The step this batch belongs to.
    pub step: u64,
    /// Rows, B.
    pub rows: usize,
    /// Columns, T.
    pub width: usize,
    /// Token ids `[B, T]`.
    pub ids: PooledBuf<T>,
    /// Real tokens per row `[B]`.
    pub lengths: PooledBuf<u32>,
    /// `[B, T]`: 1 on real tokens, 0 on padding.
    pub attention_mask: Option<PooledBuf<u8>>,
    /// `[B, T]`: the next token of the same document, else [`TokenId::IGNORE`].
    pub labels: Option<PooledBuf<T>>,
    /// `[B, T]`: position within the row, restarting per document when packed.
    pub position_ids: Option<PooledBuf<T>>,
    /// Document boundaries over the real tokens, row-major (packed batches only).
    pub cu_seqlens: Option<PooledBuf<i32>>,
    /// The document pieces, in row order.
    pub docs: PooledBuf<DocRef>,
}

impl<T: TokenId> Batch<T> {
    /// Real (unpadded) tokens.
    pub fn real_tokens(&self) -> usize {
        self.lengths.iter().map(|&l| l as usize).sum()
    }

    /// Row `r` of the ids, padding included.
    pub fn ids_row(&self, r: usize) -> &[T] {
        &self.ids[r * self.width..(r + 1) * self.width]
    }

    /// Every field as bytes, in a fixed order: two batches are equal exactly when these are.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&(self.width as u64).to_le_bytes());
        out.extend_from_slice(self.ids.as_bytes());
        out.extend_from_slice(self.lengths.as_bytes());
        for part in [
            self.attention_mask.as_ref().map(|b| b.as_bytes()),
            self.labels.as_ref().map(|b| b.as_bytes()),
            self.position_ids.as_ref().map(|b| b.as_bytes()),
            self.cu_seqlens.as_ref().map(|b| b.as_bytes()),
        ] {
            out.extend_from_slice(part.unwrap_or(&[]));
        }
        out.extend_from_slice(self.docs.as_bytes());
        out
    }
}

/// Pads a staged batch on the host: the reference for every device sink.
pub fn pad_host<T: TokenId>(
    mut staged: StagedBatch<T>,
    config: &CollateConfig,
    pool: &Pool,
) -> Batch<T> {
    let (b, w) = (staged.rows, staged.width);
    // Every [B, T] buffer is taken within the batch's largest size, B x seq_len.
    let bound = b * config.seq_len.max(w);
    let mut lengths = pool.take::<u32>(b);
    let mut attention_mask = config
        .attention_mask
        .then(|| pool.take_within::<u8>(b * w, bound));
    let mut labels = config.labels.then(|| pool.take_within::<T>(b * w, bound));
    let mut position_ids = config
        .position_ids
        .then(|| pool.take_within::<T>(b * w, bound));
    let pad = config.pad_value::<T>();
    let ids_as = PadValues {
        id: |t: T| t,
        pad,
        ignore: T::IGNORE,
        position: T::from_usize,
    };
    let mut ids = match staged.layout {
        // The collator wrote the ids in place, padding included: they become the batch's.
        Layout::Padded => std::mem::replace(&mut staged.tokens, pool.take::<T>(0)),
        Layout::Ragged => pool.take_within::<T>(b * w, bound),
    };
    fill_padded(
        &staged,
        &ids_as,
        (1u8, 0u8),
        PaddedFields {
            ids: &mut ids,
            attention_mask: attention_mask.as_deref_mut(),
            labels: labels.as_deref_mut(),
            position_ids: position_ids.as_deref_mut(),
        },
    );
    for (r, len) in lengths.iter_mut().enumerate() {
        *len = staged.offsets[r + 1] - staged.offsets[r];
    }
    let cu_seqlens = staged.packed.then(|| cu_seqlens(&staged.docs, b, pool));
    Batch {
        step: staged.step,
        rows: b,
        width: w,
        ids,
        lengths,
        attention_mask,
        labels,
        position_ids,
        cu_seqlens,
        docs: staged.docs,
    }
}

/// How a padded field's elements are made: a token id as the output element, the padding id,
/// the ignore label, a position.
pub(crate) struct PadValues<E, F, P> {
    /// A token id as an element.
    pub id: F,
    /// The padding element.
    pub pad: E,
    /// The label of a position with no next token in its document.
    pub ignore: E,
    /// A position as an element.
    pub position: P,
}

/// The `[B, T]` outputs [`fill_padded`] writes, each `rows x width` elements.
pub(crate) struct PaddedFields<'a, E, M> {
    /// Token ids.
    pub ids: &'a mut [E],
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Option<&'a mut [M]>,
    /// The next token of the same document, else the ignore label.
    pub labels: Option<&'a mut [E]>,
    /// Position within the row, restarting per document piece.
    pub position_ids: Option<&'a mut [E]>,
}

/// Writes the padded `[B, T]` fields of `staged` in one pass per field, converting each id as
/// `values` says: the host batch writes ids of their own type, the Burn sink writes the device's
/// int dtype straight into the buffers Burn takes. `mask` is the (one, zero) of the mask.
pub(crate) fn fill_padded<T: TokenId, E: Copy, M: Copy, F: Fn(T) -> E, P: Fn(usize) -> E>(
    staged: &StagedBatch<T>,
    values: &PadValues<E, F, P>,
    (one, zero): (M, M),
    out: PaddedFields<'_, E, M>,
) {
    let (b, w) = (staged.rows, staged.width);
    let len = |r: usize| (staged.offsets[r + 1] - staged.offsets[r]) as usize;
    // A padded layout's ids are already in `out.ids` (see `pad_host`).
    if staged.layout == Layout::Ragged {
        for r in 0..b {
            let row = staged.row(r);
            let dst = &mut out.ids[r * w..(r + 1) * w];
            for (d, &t) in dst.iter_mut().zip(row) {
                *d = (values.id)(t);
            }
            dst[row.len()..].fill(values.pad);
        }
    }
    if let Some(m) = out.attention_mask {
        for r in 0..b {
            let len = len(r);
            m[r * w..r * w + len].fill(one);
            m[r * w + len..(r + 1) * w].fill(zero);
        }
    }
    if let Some(l) = out.labels {
        l.fill(values.ignore);
        for d in staged.docs.iter() {
            let at = d.row as usize * w + d.start as usize;
            let n = d.len as usize;
            if n > 1 {
                l[at..at + n - 1].copy_from_slice(&out.ids[at + 1..at + n]);
            }
        }
    }
    if let Some(p) = out.position_ids {
        p.fill((values.position)(0));
        for d in staged.docs.iter() {
            let at = d.row as usize * w + d.start as usize;
            for (j, slot) in p[at..at + d.len as usize].iter_mut().enumerate() {
                *slot = (values.position)(j);
            }
        }
    }
}

/// Document boundaries over the real tokens of a packed batch of `rows` rows, row-major: 0, then
/// the running sum of every non-empty piece's length.
pub(crate) fn cu_seqlens(docs: &[DocRef], rows: usize, pool: &Pool) -> PooledBuf<i32> {
    let pieces = docs.iter().filter(|d| d.len > 0);
    let mut cu = pool.take_within::<i32>(pieces.clone().count() + 1, PIECES_PER_ROW * rows + 1);
    cu[0] = 0;
    for (i, d) in pieces.enumerate() {
        cu[i + 1] = cu[i] + d.len as i32;
    }
    cu
}
