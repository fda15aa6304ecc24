//! The kernels of `kernels/`, each behind one typed safe function. A function checks what it is
//! given against the buffers (every index the kernel can form lies inside them, whatever the
//! buffers hold) and against the kernel's limits (a size past its 32-bit arguments is an error
//! naming it, never a truncation) before its one unsafe launch, so its callers are safe code.
//! Both kernels loop over their work with a grid stride, so a grid within [`MAX_BLOCKS`] covers
//! any size the kernel takes: `pad_collate` up to `u32::MAX` rows of `u32::MAX` columns (64-bit
//! cell indexes), `sketch` up to `u32::MAX` values.
//!
//! Each launch is queued on a stream of the context that loaded the kernel; buffers may come
//! from any stream of that context: cudarc orders a launch after the pending work on its
//! buffers, and later work on them after the launch.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

use super::CudaContext;
use crate::error::{Error, Result};
use crate::gpu::nvrtc::Kernel;

/// Threads per block (the sketch's `metrics::device::GROUP`).
const BLOCK: u32 = 256;

/// The most blocks of a launch: far more than a GPU runs at once (an H100 holds about 1 000
/// blocks of 256), within every grid limit (CUDA's x dimension allows 2^31 - 1); the kernels'
/// grid-stride loops take the rest.
pub(crate) const MAX_BLOCKS: u32 = 65_535;

/// The arguments of `kernels/pad_collate.cu`: a batch of `rows` ragged rows padded to `width`
/// columns. Ids travel as their 4-byte bits.
#[derive(Debug)]
pub(crate) struct PadCollateArgs<'a> {
    /// Rows, B.
    pub rows: usize,
    /// Columns, T.
    pub width: usize,
    /// The id written after each row's real tokens.
    pub pad: u32,
    /// The label of a position with no next token in its document.
    pub ignore: u32,
    /// The optional outputs written: bit 0 the mask, bit 1 labels, bit 2 position ids.
    pub fields: u32,
    /// The real tokens, row after row.
    pub tokens: &'a CudaSlice<u32>,
    /// Row offsets into `tokens`, at least `rows + 1`.
    pub offsets: &'a CudaSlice<u32>,
    /// For each row the range of its pieces, at least `rows + 1`.
    pub row_pieces: &'a CudaSlice<u32>,
    /// The pieces as (start column, length) pairs, sorted by start within each row.
    pub pieces: &'a CudaSlice<u32>,
    /// Ids `[B, T]`, at least `rows * width`.
    pub ids: &'a mut CudaSlice<u32>,
    /// The attention mask `[B, T]`, one byte each; at least `rows * width` when bit 0 is set.
    pub mask: &'a mut CudaSlice<u8>,
    /// Labels `[B, T]`; at least `rows * width` when bit 1 is set.
    pub labels: &'a mut CudaSlice<u32>,
    /// Position ids `[B, T]`; at least `rows * width` when bit 2 is set.
    pub positions: &'a mut CudaSlice<u32>,
}

/// Queues `kernels/pad_collate.cu` on `stream`: every padded field of the batch `args`
/// describes, as `collate::pad_host` builds it (nothing for an empty batch). Index arrays that
/// point outside `tokens` or `pieces` are clamped to them by the kernel. The grid is at most
/// [`MAX_BLOCKS`] blocks; each thread takes every (blocks x 256)-th cell.
///
/// # Errors
///
/// [`Error::Device`] naming the argument when a buffer is too small, rows, columns, ragged ids or
/// piece words pass the kernel's `u32::MAX`, or a buffer or `stream` belongs to another context;
/// [`Error::Kernel`] or [`Error::Device`] when the kernel cannot be compiled or loaded; the
/// driver's error.
pub(crate) fn launch_pad_collate(
    ctx: &CudaContext,
    stream: &Arc<CudaStream>,
    args: PadCollateArgs<'_>,
) -> Result<()> {
    let op = "launch pad_collate";
    let check = Check { ctx, op };
    let cells = args
        .rows
        .checked_mul(args.width)
        .ok_or_else(|| check.fail(format!("{} rows x {} columns", args.rows, args.width)))?;
    if cells == 0 {
        return Ok(());
    }
    let rows = check.u32("rows", args.rows)?;
    let width = check.u32("width", args.width)?;
    let tokens_len = check.u32("tokens", args.tokens.len())?;
    // Pairs; the kernel's 2 * pair + 1 stays below the length, within u32.
    let pieces_len = check.u32("pieces", args.pieces.len())? / 2;
    let blocks = grid(cells as u64);
    check.holds("offsets", args.offsets.len(), args.rows + 1)?;
    check.holds("row_pieces", args.row_pieces.len(), args.rows + 1)?;
    check.holds("ids", args.ids.len(), cells)?;
    // An optional output is written only when its bit is set.
    let wanted = |bit: u32| if args.fields & bit != 0 { cells } else { 0 };
    check.holds("mask", args.mask.len(), wanted(1))?;
    check.holds("labels", args.labels.len(), wanted(2))?;
    check.holds("positions", args.positions.len(), wanted(4))?;
    check.on_context(stream, "stream", stream)?;
    for (name, s) in [
        ("tokens", args.tokens.stream()),
        ("offsets", args.offsets.stream()),
        ("row_pieces", args.row_pieces.stream()),
        ("pieces", args.pieces.stream()),
        ("ids", args.ids.stream()),
        ("mask", args.mask.stream()),
        ("labels", args.labels.stream()),
        ("positions", args.positions.stream()),
    ] {
        check.on_context(stream, name, s)?;
    }
    let function = ctx.entry(Kernel::PadCollate, "pad_collate")?;
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&rows)
        .arg(&width)
        .arg(&args.pad)
        .arg(&args.ignore)
        .arg(&args.fields)
        .arg(&tokens_len)
        .arg(&pieces_len)
        .arg(args.tokens)
        .arg(args.offsets)
        .arg(args.row_pieces)
        .arg(args.pieces)
        .arg(args.ids)
        .arg(args.mask)
        .arg(args.labels)
        .arg(args.positions);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the function is pad_collate of kernels/pad_collate.cu, loaded by `ctx` (not one the
    // caller chose), and the arguments follow its signature in order and type. Its threads index
    // below rows * width = `cells` only (64-bit indexes in a grid-stride loop), and only into:
    // `ids` (checked to hold `cells`), `mask`, `labels`, `positions` (each checked to hold
    // `cells` when its bit of `fields` lets the kernel write it), `offsets` and `row_pieces` at
    // r and r + 1 for r < rows (checked to hold rows + 1), `tokens` below `tokens_len` = its
    // length and `pieces` below 2 * `pieces_len` <= its length (the kernel clamps the
    // data-dependent indexes to those two, so no content of the index arrays reaches outside
    // them). Every buffer and the stream belong to `ctx` (checked); cudarc orders the launch
    // after pending work on each buffer (its event tracking, on unless disabled through cudarc's
    // unsafe call), and a buffer's drop frees it in its stream's order, after the launch.
    unsafe { launch.launch(cfg) }.map_err(ctx.fail(op))?;
    Ok(())
}

/// The arguments of `kernels/sketch.cu`: `n` f32 values (as bits), each counted for the
/// dataset `dataset_of` names, binned by `table` into per-dataset counts and summed into
/// per-thread partials.
#[derive(Debug)]
pub(crate) struct SketchArgs<'a> {
    /// Values to bin, from the buffers' starts.
    pub n: usize,
    /// Datasets, D (values naming a dataset past it are skipped).
    pub datasets: usize,
    /// Buckets per side, nb: at least 1.
    pub buckets: usize,
    /// Blocks of 256 threads (`metrics::device::sketch_groups`): 1..=[`MAX_BLOCKS`]. The
    /// partition of the sums follows from it.
    pub blocks: usize,
    /// The values, at least `n` (f32 bits as u32, or f32).
    pub values: &'a CudaSlice<f32>,
    /// The dataset of each value, at least `n`.
    pub dataset_of: &'a CudaSlice<u32>,
    /// The smallest magnitude bits of each bucket, at least `buckets`.
    pub table: &'a CudaSlice<u32>,
    /// Per-dataset counts `[D, 8 + 2 nb]`, at least that many.
    pub counts: &'a mut CudaSlice<u32>,
    /// Per-thread sums `[D, 256 blocks]`, zeroed, at least that many.
    pub partials: &'a mut CudaSlice<f64>,
}

/// Queues `kernels/sketch.cu` on `stream`: the values' sketch counts added into `counts`, their
/// per-thread sums added to `partials` (nothing when `n` is 0, once the kernel is loaded).
///
/// # Errors
///
/// As [`launch_pad_collate`]; the kernel's limits are `n` up to `u32::MAX` and
/// `D x (8 + 2 nb)` counts below `u32::MAX` words.
pub(crate) fn launch_sketch(
    ctx: &CudaContext,
    stream: &Arc<CudaStream>,
    args: SketchArgs<'_>,
) -> Result<()> {
    let op = "launch sketch";
    let check = Check { ctx, op };
    // Loaded first, so a kernel that does not compile is an error whatever the values.
    let function = ctx.entry(Kernel::Sketch, "sketch")?;
    if args.n == 0 {
        return Ok(());
    }
    if args.buckets == 0 || !(1..=MAX_BLOCKS as usize).contains(&args.blocks) {
        return Err(check.fail(format!(
            "{} buckets and {} blocks: buckets must be positive, blocks in 1..={MAX_BLOCKS}",
            args.buckets, args.blocks
        )));
    }
    let n = check.u32("n", args.n)?;
    let datasets = check.u32("datasets", args.datasets)?;
    let buckets = check.u32("buckets", args.buckets)?;
    let blocks = args.blocks as u32;
    // The kernel's counts words are u32, with room for the +1 that marks a table slot in use.
    let counts = args
        .buckets
        .checked_mul(2)
        .and_then(|b| b.checked_add(8))
        .and_then(|stride| stride.checked_mul(args.datasets))
        .filter(|&c| c < u32::MAX as usize)
        .ok_or_else(|| {
            check.fail(format!(
                "{} datasets of 8 + 2 x {} counts pass the kernel's limit of {} words",
                args.datasets,
                args.buckets,
                u32::MAX - 1
            ))
        })?;
    let threads = args.blocks * BLOCK as usize;
    let partials = threads
        .checked_mul(args.datasets)
        .ok_or_else(|| check.fail(format!("{threads} threads of {} datasets", args.datasets)))?;
    check.holds("values", args.values.len(), args.n)?;
    check.holds("dataset_of", args.dataset_of.len(), args.n)?;
    check.holds("table", args.table.len(), args.buckets)?;
    check.holds("counts", args.counts.len(), counts)?;
    check.holds("partials", args.partials.len(), partials)?;
    check.on_context(stream, "stream", stream)?;
    for (name, s) in [
        ("values", args.values.stream()),
        ("dataset_of", args.dataset_of.stream()),
        ("table", args.table.stream()),
        ("counts", args.counts.stream()),
        ("partials", args.partials.stream()),
    ] {
        check.on_context(stream, name, s)?;
    }
    let mut launch = stream.launch_builder(&function);
    launch
        .arg(&n)
        .arg(&datasets)
        .arg(&buckets)
        .arg(args.values)
        .arg(args.dataset_of)
        .arg(args.table)
        .arg(args.counts)
        .arg(args.partials);
    let cfg = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        // The kernel's table is static shared memory (16 KiB).
        shared_mem_bytes: 0,
    };
    // SAFETY: the function is sketch of kernels/sketch.cu, loaded by `ctx`, and the arguments
    // follow its signature in order and type (f32 values travel as their bits). Thread g of the
    // T = blocks x 256 threads (T <= 65 535 x 256, so g and T fit its u32) reads `values` and
    // `dataset_of` below n (both checked to hold n), `table` below `buckets` (checked to hold
    // it; buckets >= 1, so table[0] exists), adds to `partials` at d * T + g for d < D (checked
    // to hold D x T; 64-bit index), and to `counts` at d * (8 + 2 nb) + k for d < D (the kernel
    // skips larger datasets) and k < 8 + 2 nb, below D x (8 + 2 nb) (checked to hold that many,
    // fewer than u32::MAX so the kernel's u32 words and their +1 keys do not wrap). Its shared
    // table is indexed below its own size. Every buffer and the stream belong to `ctx`
    // (checked); cudarc orders the launch after pending work on each buffer, and the borrows
    // keep them alive until it is queued.
    unsafe { launch.launch(cfg) }.map_err(ctx.fail(op))?;
    Ok(())
}

/// Blocks of [`BLOCK`] threads for `threads` threads of a grid-stride kernel: one thread each,
/// up to [`MAX_BLOCKS`].
fn grid(threads: u64) -> u32 {
    threads
        .div_ceil(u64::from(BLOCK))
        .min(u64::from(MAX_BLOCKS)) as u32
}

/// The argument checks of one launch, failing with an [`Error::Device`] on the context.
struct Check<'a> {
    ctx: &'a CudaContext,
    op: &'a str,
}

impl Check<'_> {
    fn fail(&self, reason: String) -> Error {
        super::device_error(&self.ctx.label(), self.op, reason)
    }

    /// `n` as the kernel's u32 argument `name`.
    fn u32(&self, name: &str, n: usize) -> Result<u32> {
        u32::try_from(n).map_err(|_| self.fail(format!("{name} is {n}, past u32::MAX")))
    }

    /// That buffer `name` of `len` elements holds the `need` the kernel indexes.
    fn holds(&self, name: &str, len: usize, need: usize) -> Result<()> {
        if len < need {
            return Err(self.fail(format!(
                "{name} holds {len} elements, the kernel needs {need}"
            )));
        }
        Ok(())
    }

    /// That `of` (the stream of buffer `name`, or the launch stream) is on the launch's context.
    fn on_context(&self, stream: &Arc<CudaStream>, name: &str, of: &Arc<CudaStream>) -> Result<()> {
        if !Arc::ptr_eq(of.context(), self.ctx.driver())
            || !Arc::ptr_eq(stream.context(), self.ctx.driver())
        {
            return Err(self.fail(format!(
                "{name} belongs to cuda:{}, not this context",
                of.context().ordinal()
            )));
        }
        Ok(())
    }
}
