//! Device sketches on CUDA: `kernels/sketch.cu`, the port of `shaders/sketch.wgsl`, with the
//! same table, layout, grid and order of addition, so its sketches equal the host's bucket for
//! bucket (and the wgpu shader's, sums included).

use cudarc::driver::CudaSlice;

use super::{GROUP, bucket_table, initial_counts, sketch_groups, sketches_from};
use crate::error::Result;
use crate::gpu::cuda::{CudaContext, SketchArgs, launch_sketch};
use crate::metrics::{Aggregator, Mapping, Sketch};

/// The sketches of the first `n` f32 values of `values`, each counted for the dataset
/// `dataset_of` names (an index into `names`), built on `ctx`'s device by `kernels/sketch.cu`,
/// one per name. The kernel runs on the context's compute stream. With no values or no names
/// nothing runs on the device and nothing is allocated.
///
/// # Errors
///
/// [`crate::Error::Device`] or [`crate::Error::Kernel`] for a device or compilation failure, or
/// for sizes past the kernel's limits (`n` past `u32::MAX`, counts past 2^32 words), naming
/// them; [`crate::Error::Metric`] naming the dataset for a NaN or infinite value (the host
/// refuses them too).
pub fn cuda_sketches(
    ctx: &CudaContext,
    map: &Mapping,
    values: &CudaSlice<f32>,
    dataset_of: &CudaSlice<u32>,
    n: usize,
    names: &[String],
) -> Result<Vec<Sketch>> {
    let op = "bin device values";
    let fail = ctx.fail(op);
    if values.len() < n || dataset_of.len() < n {
        return Err(ctx.error(
            op,
            format!(
                "{n} values asked for, but the buffers hold {} values and {} datasets",
                values.len(),
                dataset_of.len()
            ),
        ));
    }
    if n == 0 || names.is_empty() {
        // Nothing to bin (or no dataset to bin into): no allocation, no launch.
        return Ok(vec![Sketch::default(); names.len()]);
    }
    let stream = ctx.compute_stream();
    let datasets = names.len();
    let nb = map.buckets();
    let blocks = sketch_groups(n);
    let threads = blocks * GROUP;
    let partial_len = datasets.checked_mul(threads).ok_or_else(|| {
        ctx.error(
            op,
            format!("{datasets} datasets x {threads} threads pass usize"),
        )
    })?;
    let table = stream.clone_htod(&bucket_table(map)).map_err(&fail)?;
    let mut counts = stream
        .clone_htod(&initial_counts(datasets, nb))
        .map_err(&fail)?;
    let mut partials = stream.alloc_zeros::<f64>(partial_len).map_err(&fail)?;
    launch_sketch(
        ctx,
        stream,
        SketchArgs {
            n,
            datasets,
            buckets: nb,
            blocks,
            values,
            dataset_of,
            table: &table,
            counts: &mut counts,
            partials: &mut partials,
        },
    )?;
    let counts = stream.clone_dtoh(&counts).map_err(&fail)?;
    let partials = stream.clone_dtoh(&partials).map_err(&fail)?;
    sketches_from(map, &counts, &partials, threads, names)
}

impl Aggregator {
    /// Records `n` f32 values that live on a CUDA device as the DISTRIBUTION metric `metric` of
    /// their datasets: value i belongs to dataset `names[dataset_of[i]]`. The sketches are
    /// built on the device and merged here: only `datasets x buckets` counts cross back.
    ///
    /// # Errors
    ///
    /// As [`cuda_sketches`]; [`crate::Error::Metric`] for a kind conflict.
    pub fn record_device_cuda(
        &mut self,
        ctx: &CudaContext,
        names: &[String],
        metric: &str,
        values: &CudaSlice<f32>,
        dataset_of: &CudaSlice<u32>,
        n: usize,
    ) -> Result<()> {
        let map = *self.mapping();
        let sketches = cuda_sketches(ctx, &map, values, dataset_of, n, names)?;
        self.add_device_sketches(names, metric, &sketches)
    }
}
