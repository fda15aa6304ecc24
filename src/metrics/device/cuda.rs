//! Device sketches on CUDA: `kernels/sketch.cu`, the port of `shaders/sketch.wgsl`, with the
//! same table, layout and chunked sums, so its sketches equal the host's bucket for bucket.

use cudarc::driver::CudaSlice;

use super::{CHUNK, bucket_table, initial_counts, sketches_from};
use crate::error::Result;
use crate::gpu::cuda::{CudaContext, SketchArgs, launch_sketch};
use crate::metrics::{Aggregator, Mapping, Sketch};

/// The sketches of the first `n` f32 values of `values`, each counted for the dataset
/// `dataset_of` names (an index into `names`), built on `ctx`'s device by `kernels/sketch.cu`,
/// one per name. The kernel runs on the context's compute stream.
///
/// # Errors
///
/// [`crate::Error::Device`] or [`crate::Error::Kernel`] for a device or compilation failure;
/// [`crate::Error::Metric`] naming the dataset for a NaN or infinite value (the host refuses
/// them too).
pub fn cuda_sketches(
    ctx: &CudaContext,
    map: &Mapping,
    values: &CudaSlice<f32>,
    dataset_of: &CudaSlice<u32>,
    n: usize,
    names: &[String],
) -> Result<Vec<Sketch>> {
    let fail = ctx.fail("bin device values");
    if values.len() < n || dataset_of.len() < n {
        return Err(ctx.error(
            "bin device values",
            format!(
                "{n} values asked for, but the buffers hold {} values and {} datasets",
                values.len(),
                dataset_of.len()
            ),
        ));
    }
    let stream = ctx.compute_stream();
    let datasets = names.len();
    let nb = map.buckets();
    let chunks = n.div_ceil(CHUNK);
    let table = stream.clone_htod(&bucket_table(map)).map_err(&fail)?;
    let mut counts = stream
        .clone_htod(&initial_counts(datasets, nb))
        .map_err(&fail)?;
    let mut partials = stream
        .alloc_zeros::<f64>((chunks * datasets).max(1))
        .map_err(&fail)?;
    launch_sketch(
        ctx,
        stream,
        SketchArgs {
            n,
            datasets,
            buckets: nb,
            chunk: CHUNK,
            values,
            dataset_of,
            table: &table,
            counts: &mut counts,
            partials: &mut partials,
        },
    )?;
    let counts = stream.clone_dtoh(&counts).map_err(&fail)?;
    let partials = stream.clone_dtoh(&partials).map_err(&fail)?;
    sketches_from(map, &counts, &partials, n, names)
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
