//! The parallel side of the loader: the [`Collator`], with which a worker turns a job into a staged batch by decoding token
//! ids straight from the memory maps into pooled staging memory and applying the transforms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::collate::{CollateConfig, DocRef, Layout, Pool, PooledBuf, StagedBatch};
use crate::error::{Error, Result};
use crate::metrics::{Aggregator, ClassNames, MetricsConfig, SampleMetrics};
use crate::shard::{Dataset, TokenId, TokenSlice};
use crate::transform::{
    BadSamplePolicy, SampleInfo, Shape, TransformConfig, TruncatePolicy, UserTransform,
};

use super::job::Job;

/// A sample the skip policy skipped; the consumer counts it against the limit.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Skip {
    pub dataset: u32,
    pub epoch: u64,
    pub sample: u64,
    pub reason: String,
}

/// A user metric: records metrics of one sample (its ids after every transform).
pub type UserMetric<T> =
    Arc<dyn Fn(&SampleInfo<'_>, &[T], &mut SampleMetrics<'_>) -> Result<(), String> + Send + Sync>;

/// Rows between a row whose first cache lines are prefetched and the row being decoded.
const PREFETCH_ROWS: usize = 3;
/// Cache lines prefetched at the start of a row.
const PREFETCH_LINES: usize = 12;
/// Slices a padded batch's build keeps: the row being decoded and the rows prefetched ahead.
const AHEAD: usize = PREFETCH_ROWS + 1;

/// The sample a worker is on, for reporting a panic.
pub(crate) type Current = Option<(u32, u64)>;

/// What every worker shares to turn a job into a staged batch: the datasets, the transforms
/// and the collate settings.
pub(crate) struct Collator<T: TokenId> {
    /// The datasets, in plan order.
    pub datasets: Vec<Dataset>,
    pub names: Vec<String>,
    pub transform: TransformConfig,
    pub user: Vec<UserTransform<T>>,
    pub collate: CollateConfig,
    /// The sink's staging memory (pinned memory for the CUDA sink), which its `prepare` takes
    /// the staged batches from.
    pub pool: Pool,
    /// Each dataset's classes, for the standard `class` metric.
    pub classes: Vec<Option<ClassNames>>,
    /// The layout the sink takes padded batches in.
    pub layout: Layout,
    /// A row of padding ids as wide as any padded batch: padding is copied from it (a wide
    /// `memcpy`) rather than stored element by element.
    pub pad_row: Vec<T>,
    /// Heap memory for what stays on the host: the per-batch metric partials.
    pub host_pool: Pool,
    pub stop: Arc<AtomicBool>,
    pub metrics: Option<MetricsConfig>,
    pub user_metrics: Vec<UserMetric<T>>,
}

impl<T: TokenId> Collator<T> {
    /// The BOS id as `T` (checked to fit when the loader was built).
    fn bos(&self) -> Option<T> {
        self.transform.bos.and_then(|v| T::try_from(v).ok())
    }

    /// The EOS id as `T`.
    fn eos(&self) -> Option<T> {
        self.transform.eos.and_then(|v| T::try_from(v).ok())
    }

    /// The longest sample: packed documents are cut across rows, so only an explicit maximum
    /// caps them (as in the packer); padded rows are capped by the row length too.
    fn max_len(&self) -> usize {
        match (self.collate.pack, self.transform.max_len) {
            (true, cap) => cap.unwrap_or(usize::MAX),
            (false, cap) => cap
                .unwrap_or(self.collate.seq_len)
                .min(self.collate.seq_len),
        }
    }

    /// Builds the staged batch of `job`; skipped samples are listed in `skips`.
    pub fn build(
        &self,
        job: Job,
        current: &mut Current,
        scratch: &mut Vec<T>,
        skips: &mut Vec<Skip>,
        partial: Option<&mut Aggregator>,
    ) -> Result<StagedBatch<T>> {
        let staged = if job.packed {
            self.build_packed(job, current, skips)?
        } else {
            self.build_padded(job, current, scratch, skips, partial)?
        };
        Ok(staged)
    }

    /// The length of a padded row's sample after the built-in transforms, from its index entry
    /// alone (0 for a sample that will fail or be dropped).
    fn planned_len(&self, p: &DocRef) -> usize {
        let Some(raw) = self.dataset(p).sequence_len(p.sample as usize) else {
            return 0;
        };
        match self.transform.shape(raw, self.max_len()) {
            Ok(Shape::Keep { content, .. }) => content + self.transform.extra(),
            _ => 0,
        }
    }

    /// The width of a padded batch, planned from the index before any token is read: known
    /// exactly unless a user transform may change lengths (then `None`, and the batch is staged
    /// ragged).
    fn planned_width(&self, pieces: &[DocRef]) -> Option<usize> {
        if self.layout != Layout::Padded || !self.user.is_empty() {
            return None;
        }
        let mut longest = 0;
        for (r, p) in pieces.iter().enumerate() {
            if let Some(later) = pieces.get(r + 2 * PREFETCH_ROWS) {
                self.dataset(later).prefetch_entry(later.sample as usize);
            }
            longest = longest.max(self.planned_len(p));
        }
        let width = self.collate.width(longest);
        debug_assert!(
            width <= self.pad_row.len(),
            "the padding row covers every width"
        );
        Some(width)
    }

    /// Builds a padded batch, one sample per row: padded in place at the planned width (the
    /// host sink), else staged ragged.
    fn build_padded(
        &self,
        mut job: Job,
        current: &mut Current,
        scratch: &mut Vec<T>,
        skips: &mut Vec<Skip>,
        mut partial: Option<&mut Aggregator>,
    ) -> Result<StagedBatch<T>> {
        let rows = job.rows;
        // The first rows' index entries: the loops below request each row's entries
        // `2 * PREFETCH_ROWS` rows ahead of its use.
        for p in job.pieces.iter().take(2 * PREFETCH_ROWS) {
            self.dataset(p).prefetch_entry(p.sample as usize);
        }
        let stride = self.planned_width(&job.pieces);
        let mut tokens = self.take_tokens(rows, stride);
        let mut offsets = self.pool.take::<u32>(rows + 1);
        let mut pos = 0;
        let mut longest = 0;
        // The slices of the rows ahead, found once: prefetched a few rows early, decoded from
        // the same slice.
        let mut ahead = [None; AHEAD];
        for (r, p) in job.pieces.iter().enumerate().take(PREFETCH_ROWS) {
            ahead[r % AHEAD] = self.look_ahead(p);
        }
        for r in 0..rows {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::WorkersStopped { batch: job.batch });
            }
            // Planning the width read the index entries already.
            self.prefetch_ahead(&job.pieces, r, stride.is_none(), &mut ahead);
            let slice = ahead[r % AHEAD].take();
            let piece = &mut job.pieces[r];
            *current = Some((piece.dataset, piece.sample));
            offsets[r] = pos as u32;
            let row = match stride {
                Some(w) => &mut tokens[r * w..(r + 1) * w],
                None => &mut tokens[pos..],
            };
            let n = match self.fill_row(piece, slice, row, scratch) {
                Ok(n) => {
                    piece.len = n as u32;
                    piece.doc_len = n as u32;
                    self.record_metrics(job.batch, piece, &row[..n], partial.as_deref_mut())?;
                    n
                }
                Err(reason) => self.skip_or_fail(job.batch, piece, reason, skips)?,
            };
            if stride.is_some() {
                let rest = row.len() - n;
                row[n..].copy_from_slice(&self.pad_row[..rest]);
            }
            pos += n;
            longest = longest.max(n);
        }
        offsets[rows] = pos as u32;
        let width = self.collate.width(longest);
        let layout = close_up(&mut tokens, rows, stride, pos, width);
        Ok(StagedBatch {
            step: job.batch,
            rows,
            width,
            tokens,
            offsets,
            docs: job.pieces,
            packed: false,
            layout,
        })
    }

    /// Staging for a padded batch's ids: `rows` rows of the planned width `stride`, or without
    /// one room for `rows` samples of `max_len` tokens (every row fits that bound, so it sizes
    /// the buffer without a pass over the lengths).
    fn take_tokens(&self, rows: usize, stride: Option<usize>) -> PooledBuf<T> {
        match stride {
            Some(w) => self
                .pool
                .take_within::<T>(rows * w, rows * self.collate.seq_len.max(w)),
            None => self.pool.take::<T>(rows * self.max_len()),
        }
    }

    /// Rows are read in plan order from random places: while row `r` is decoded, the first
    /// cache lines of the row PREFETCH_ROWS ahead are requested (its slice kept in `ahead`, by
    /// row modulo [`AHEAD`]), and (with `entries`) the index entries of the row twice as far
    /// ahead.
    #[inline]
    fn prefetch_ahead<'s>(
        &'s self,
        pieces: &[DocRef],
        r: usize,
        entries: bool,
        ahead: &mut [Option<TokenSlice<'s>>; AHEAD],
    ) {
        if entries && let Some(later) = pieces.get(r + 2 * PREFETCH_ROWS) {
            self.dataset(later).prefetch_entry(later.sample as usize);
        }
        if let Some(next) = pieces.get(r + PREFETCH_ROWS) {
            ahead[(r + PREFETCH_ROWS) % AHEAD] = self.look_ahead(next);
        }
    }

    /// The slice of a row's sample (`None` outside its dataset), its first cache lines
    /// requested.
    #[inline]
    fn look_ahead(&self, p: &DocRef) -> Option<TokenSlice<'_>> {
        let slice = self.dataset(p).get(p.sample as usize)?;
        slice.prefetch(PREFETCH_LINES);
        Some(slice)
    }

    /// Records the user metrics of a row's sample (`ids`, after every transform) into the
    /// batch's partial, if there is one.
    #[inline]
    fn record_metrics(
        &self,
        step: u64,
        piece: &DocRef,
        ids: &[T],
        partial: Option<&mut Aggregator>,
    ) -> Result<()> {
        let Some(agg) = partial.filter(|_| !self.user_metrics.is_empty()) else {
            return Ok(());
        };
        let name = &self.names[piece.dataset as usize];
        let info = SampleInfo {
            dataset: name,
            sample: piece.sample,
            epoch: piece.epoch,
        };
        for f in &self.user_metrics {
            f(&info, ids, &mut SampleMetrics::new(agg, name))
                .map_err(|r| self.sample_error(step, piece, format!("metric: {r}")))?;
        }
        Ok(())
    }

    /// Applies the bad-sample policy to a row whose sample failed: an error, or an empty row
    /// (length 0) and the sample listed in `skips`.
    fn skip_or_fail(
        &self,
        step: u64,
        piece: &mut DocRef,
        reason: String,
        skips: &mut Vec<Skip>,
    ) -> Result<usize> {
        match self.transform.bad_samples {
            BadSamplePolicy::Error => Err(self.sample_error(step, piece, reason)),
            BadSamplePolicy::Skip { .. } => {
                piece.flags |= DocRef::SKIPPED;
                piece.len = 0;
                skips.push(Skip {
                    dataset: piece.dataset,
                    epoch: piece.epoch,
                    sample: piece.sample,
                    reason,
                });
                Ok(0)
            }
        }
    }

    /// Writes one padded row's sample (`slice`, found by [`Collator::look_ahead`]) at the
    /// start of `out`; returns its length.
    fn fill_row(
        &self,
        piece: &mut DocRef,
        slice: Option<TokenSlice<'_>>,
        out: &mut [T],
        scratch: &mut Vec<T>,
    ) -> Result<usize, String> {
        let slice = slice.ok_or_else(|| outside(piece))?;
        let content = match self.transform.shape(slice.len(), self.max_len())? {
            Shape::Dropped => {
                piece.flags |= DocRef::DROPPED;
                return Ok(0);
            }
            Shape::Keep { content, truncated } => {
                if truncated {
                    piece.flags |= DocRef::TRUNCATED;
                }
                content
            }
        };
        let mut n = 0;
        if let Some(bos) = self.bos() {
            out[0] = bos;
            n = 1;
        }
        n += slice
            .sub(0..content)
            .decode_into(&mut out[n..])
            .map_err(|e| e.to_string())?;
        if let Some(eos) = self.eos() {
            out[n] = eos;
            n += 1;
        }
        if self.user.is_empty() {
            return Ok(n);
        }
        scratch.clear();
        scratch.extend_from_slice(&out[..n]);
        let info = SampleInfo {
            dataset: &self.names[piece.dataset as usize],
            sample: piece.sample,
            epoch: piece.epoch,
        };
        for f in &self.user {
            f(&info, scratch)?;
        }
        if scratch.len() > self.max_len() {
            match self.transform.truncate {
                TruncatePolicy::Truncate => {
                    scratch.truncate(self.max_len());
                    piece.flags |= DocRef::TRUNCATED;
                }
                TruncatePolicy::Drop => {
                    piece.flags |= DocRef::DROPPED;
                    return Ok(0);
                }
                TruncatePolicy::Error => {
                    return Err(format!(
                        "a transform made the sample {} tokens long, over the maximum {}",
                        scratch.len(),
                        self.max_len()
                    ));
                }
            }
        }
        out[..scratch.len()].copy_from_slice(scratch);
        Ok(scratch.len())
    }

    fn build_packed(
        &self,
        job: Job,
        current: &mut Current,
        skips: &mut Vec<Skip>,
    ) -> Result<StagedBatch<T>> {
        let total: usize = job.pieces.iter().map(|p| p.len as usize).sum();
        let mut tokens = self
            .pool
            .take_within::<T>(total, job.rows * self.collate.seq_len);
        let mut offsets = self.pool.take::<u32>(job.rows + 1);
        let mut pos = 0;
        let mut row = 0;
        offsets[0] = 0;
        for piece in job.pieces.iter() {
            *current = Some((piece.dataset, piece.sample));
            while row < piece.row as usize {
                row += 1;
                offsets[row] = pos as u32;
            }
            if piece.flags & DocRef::SKIPPED != 0 {
                let reason = "longer than the maximum length".to_string();
                skips.push(Skip {
                    dataset: piece.dataset,
                    epoch: piece.epoch,
                    sample: piece.sample,
                    reason,
                });
            }
            if piece.len == 0 {
                continue;
            }
            let n = self
                .write_piece(piece, &mut tokens[pos..pos + piece.len as usize])
                .map_err(|reason| self.sample_error(job.batch, piece, reason))?;
            pos += n;
        }
        while row < job.rows {
            row += 1;
            offsets[row] = pos as u32;
        }
        Ok(StagedBatch {
            step: job.batch,
            rows: job.rows,
            width: self.collate.seq_len,
            tokens,
            offsets,
            docs: job.pieces,
            packed: true,
            layout: Layout::Ragged,
        })
    }

    /// Writes tokens `doc_offset .. doc_offset + len` of a transformed document
    /// (`[BOS] + content + [EOS]`) into `out`.
    fn write_piece(&self, piece: &DocRef, out: &mut [T]) -> Result<usize, String> {
        let slice = self.slice(piece)?;
        let Shape::Keep { content, .. } = self.transform.shape(slice.len(), self.max_len())? else {
            return Ok(0);
        };
        let nb = self.bos().is_some() as usize;
        let (a, b) = (
            piece.doc_offset as usize,
            (piece.doc_offset + piece.len) as usize,
        );
        let mut n = 0;
        if let (Some(bos), 0) = (self.bos(), a) {
            out[0] = bos;
            n = 1;
        }
        let (lo, hi) = (a.max(nb) - nb, b.min(nb + content).saturating_sub(nb));
        if hi > lo {
            n += slice
                .sub(lo..hi)
                .decode_into(&mut out[n..])
                .map_err(|e| e.to_string())?;
        }
        if let Some(eos) = self.eos().filter(|_| b == nb + content + 1) {
            out[n] = eos;
            n += 1;
        }
        debug_assert_eq!(
            n, piece.len as usize,
            "a piece fills exactly its planned length"
        );
        Ok(n)
    }

    fn dataset(&self, p: &DocRef) -> &Dataset {
        &self.datasets[p.dataset as usize]
    }

    fn slice(&self, p: &DocRef) -> Result<TokenSlice<'_>, String> {
        self.dataset(p)
            .get(p.sample as usize)
            .ok_or_else(|| outside(p))
    }

    pub fn sample_error(&self, step: u64, p: &DocRef, reason: String) -> Error {
        Error::Sample {
            step,
            dataset: self.names[p.dataset as usize].clone(),
            sample: p.sample,
            reason,
        }
    }
}

/// Why a piece's sample could not be read: its index lies outside its dataset.
fn outside(p: &DocRef) -> String {
    format!("sample {} is outside the dataset", p.sample)
}

/// The layout of a padded batch's `tokens` once its rows are written: ragged (`stride` `None`:
/// cut to the `len` tokens written), or padded to `width`. A skipped sample leaves the batch
/// narrower than the planned `stride`: then the rows are closed up (each holds its tokens and
/// padding within the first `width` columns).
fn close_up<T: TokenId>(
    tokens: &mut PooledBuf<T>,
    rows: usize,
    stride: Option<usize>,
    len: usize,
    width: usize,
) -> Layout {
    match stride {
        None => {
            tokens.truncate(len);
            Layout::Ragged
        }
        Some(w) => {
            if w != width {
                for r in 1..rows {
                    tokens.copy_within(r * w..r * w + width, r * width);
                }
                tokens.truncate(rows * width);
            }
            Layout::Padded
        }
    }
}
