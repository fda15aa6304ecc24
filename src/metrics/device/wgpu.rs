//! Device sketches on wgpu: `shaders/sketch.wgsl`, or the host where the adapter has no f64.

use super::{GROUP, bucket_table, initial_counts, not_finite, sketch_groups, sketches_from};
use crate::error::Result;
use crate::gpu::{Shader, WgpuContext};
use crate::metrics::{Aggregator, Mapping, Sketch};

/// The sketches of `n` f32 values in `values`, each counted for the dataset `dataset_of` names
/// (a u32 per value: an index into `names`), built on `ctx`'s device, one per name. Values are
/// read from the buffers' starts. With no values or no names nothing runs on the device.
///
/// # Errors
///
/// [`crate::Error::Device`] for a device failure, buffers that hold fewer than `n` values, or
/// sizes past the shader's limits (`n` past `u32::MAX`, counts past 2^32 words, partial sums past
/// the device's storage binding limit), naming them; [`crate::Error::Metric`] naming the dataset
/// for a NaN or infinite value (the host refuses them too).
pub fn device_sketches(
    ctx: &WgpuContext,
    map: &Mapping,
    values: &wgpu::Buffer,
    dataset_of: &wgpu::Buffer,
    n: usize,
    names: &[String],
) -> Result<Vec<Sketch>> {
    let op = "bin device values";
    let bytes = 4 * n as u64;
    if values.size() < bytes || dataset_of.size() < bytes {
        return Err(ctx.error(
            op,
            format!(
                "{n} values asked for, but the buffers hold {} values and {} datasets",
                values.size() / 4,
                dataset_of.size() / 4
            ),
        ));
    }
    if n == 0 || names.is_empty() {
        // Nothing to bin (or no dataset to bin into): no buffer, no dispatch.
        return Ok(vec![Sketch::default(); names.len()]);
    }
    if !ctx.has_f64() {
        // No f64 in shaders: bring the values back and build the sketches on the host.
        return host_sketches(ctx, map, values, dataset_of, n, names);
    }
    let groups = sketch_groups(n);
    let (counts, partials) = run_shader(ctx, map, values, dataset_of, n, names.len(), groups)?;
    sketches_from(map, &counts, &partials, groups * GROUP, names)
}

/// Runs `shaders/sketch.wgsl` over `groups` workgroups: per-dataset counts `[D, 8 + 2 nb]` and
/// per-invocation sums `[D, 256 groups]`.
fn run_shader(
    ctx: &WgpuContext,
    map: &Mapping,
    values: &wgpu::Buffer,
    dataset_of: &wgpu::Buffer,
    n: usize,
    datasets: usize,
    groups: usize,
) -> Result<(Vec<u32>, Vec<f64>)> {
    use wgpu::BufferUsages as U;
    let op = "bin device values";
    let nb = map.buckets();
    let table = bucket_table(map);
    let init = initial_counts(datasets, nb);
    let limit = |what: String| ctx.error(op, format!("{what}, past the sketch shader's limit"));
    let n32 = u32::try_from(n).map_err(|_| limit(format!("{n} values")))?;
    if init.len() >= u32::MAX as usize {
        return Err(limit(format!(
            "{datasets} datasets of {} counts ({} words; u32 indexes)",
            8 + 2 * nb,
            init.len()
        )));
    }
    let partial_bytes = 8 * (datasets * groups * GROUP) as u64;
    let binding = ctx.device().limits().max_storage_buffer_binding_size;
    if partial_bytes > binding {
        return Err(ctx.error(
            op,
            format!(
                "{datasets} datasets x {} invocations of partial sums need {partial_bytes} bytes,                  past the device's max_storage_buffer_binding_size of {binding}",
                groups * GROUP
            ),
        ));
    }
    let params = ctx.buffer("sketch params", 16, U::UNIFORM | U::COPY_DST);
    let table_buf = ctx.buffer("bucket table", 4 * nb as u64, U::STORAGE | U::COPY_DST);
    let counts = ctx.buffer(
        "sketch counts",
        4 * init.len() as u64,
        U::STORAGE | U::COPY_DST | U::COPY_SRC,
    );
    // wgpu zeroes a new buffer: the partials start at 0, as the shader needs.
    let partials = ctx.buffer(
        "sketch partial sums",
        partial_bytes,
        U::STORAGE | U::COPY_SRC,
    );
    let bind = ctx.bind(
        Shader::Sketch,
        &[&params, values, dataset_of, &table_buf, &counts, &partials],
    )?;
    ctx.scoped(op, || {
        let p = [n32, datasets as u32, nb as u32, 0];
        ctx.queue()
            .write_buffer(&params, 0, bytemuck::cast_slice(&p));
        ctx.queue()
            .write_buffer(&table_buf, 0, bytemuck::cast_slice(&table));
        ctx.queue()
            .write_buffer(&counts, 0, bytemuck::cast_slice(&init));
        ctx.dispatch(Shader::Sketch, &bind, groups as u32)
    })??;
    let back = ctx.read_many(&[
        (&counts, 0, 4 * init.len() as u64),
        (&partials, 0, partial_bytes),
    ])?;
    Ok((
        bytemuck::pod_collect_to_vec(&back[0]),
        bytemuck::pod_collect_to_vec(&back[1]),
    ))
}

/// The fallback without f64 in shaders: the values come back, the host bins them.
fn host_sketches(
    ctx: &WgpuContext,
    map: &Mapping,
    values: &wgpu::Buffer,
    dataset_of: &wgpu::Buffer,
    n: usize,
    names: &[String],
) -> Result<Vec<Sketch>> {
    let back = ctx.read_many(&[(values, 0, 4 * n as u64), (dataset_of, 0, 4 * n as u64)])?;
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&back[0]);
    let owners: Vec<u32> = bytemuck::pod_collect_to_vec(&back[1]);
    let mut out = vec![Sketch::default(); names.len()];
    for (v, d) in values.into_iter().zip(owners) {
        let Some(sketch) = out.get_mut(d as usize) else {
            continue;
        };
        if !v.is_finite() {
            return Err(not_finite(
                &names[d as usize],
                format!("value {v} is not finite"),
            ));
        }
        sketch.add(map, v as f64);
    }
    Ok(out)
}

impl Aggregator {
    /// Records `n` f32 values that live on `ctx`'s device as the DISTRIBUTION metric `metric`
    /// of their datasets: value i belongs to dataset `names[dataset_of[i]]`. The sketches are
    /// built on the device (see [`crate::metrics`]'s device module) and merged here: only
    /// `datasets x buckets` counts cross back, not the values.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Device`]; [`crate::Error::Metric`] for a NaN or infinite value or a kind conflict.
    pub fn record_device(
        &mut self,
        ctx: &WgpuContext,
        names: &[String],
        metric: &str,
        values: &wgpu::Buffer,
        dataset_of: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        let map = *self.mapping();
        let sketches = device_sketches(ctx, &map, values, dataset_of, n, names)?;
        self.add_device_sketches(names, metric, &sketches)
    }
}
