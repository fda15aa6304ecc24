//! Distribution sketches of values that live on a wgpu device (per-sample losses computed on the
//! GPU, say), built there by `shaders/sketch.wgsl` so that only the sketches come back.
//!
//! The device must build the sketch the host builds from the same values. Each value is an
//! f32; the host records it as f64 (exactly). The bucket comes from a table of f32 bit patterns
//! that this module computes with the host's own [`Mapping`]: entry `j` is the smallest positive
//! f32 whose host bucket is at least `min_index + j`. Positive f32 bits order like their values,
//! and the host's bucket never falls as the value rises (its polynomial is increasing, and
//! adjacent f32 values differ by far more than the f64 rounding of its evaluation), so the last
//! entry at or below a value's bits is its host bucket: the device compares integers only.
//!
//! Buckets, count, zero count, minimum and maximum are therefore exactly the host's. The sum is
//! added in chunks of [`CHUNK`] values (in order within a chunk, then chunk by chunk), not one by
//! one, so it may differ from the host's running sum in the last bits: both lie within
//! `n * 2^-53 * sum |v|` of the exact sum of `n` values.

use super::Aggregator;
use super::sketch::{MAX_VALUE, MIN_VALUE, Mapping, Sketch};
use crate::error::{Error, Result};
use crate::gpu::{Shader, WgpuContext};

/// Values one shader invocation adds up (llvmpipe bounds the loop iterations of an invocation).
pub const CHUNK: usize = 256;

/// The table of f32 bit patterns: entry `j` is the smallest positive f32 whose bucket under `map`
/// is at least `map.min_index + j`; entry 0 is the smallest f32 that is not counted as zero.
pub fn bucket_table(map: &Mapping) -> Vec<u32> {
    let host = |bits: u32| map.index((f32::from_bits(bits) as f64).min(MAX_VALUE));
    let first = |pred: &dyn Fn(u32) -> bool| {
        // The smallest finite positive bits where `pred` holds (it holds at the largest).
        let (mut lo, mut hi) = (0u32, 0x7f7f_ffffu32);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(mid) { hi = mid } else { lo = mid + 1 }
        }
        lo
    };
    let zero = first(&|b| f32::from_bits(b) as f64 >= MIN_VALUE);
    let n = map.buckets();
    (0..n)
        .map(|j| {
            let i = map.min_index + j as i32;
            first(&|b| b >= zero && host(b) >= i)
        })
        .collect()
}

/// The sketches of `n` f32 values in `values`, each counted for the dataset `dataset_of` names
/// (a u32 per value: an index into `names`), built on `ctx`'s device, one per name. Values are
/// read from the buffers' starts.
///
/// # Errors
///
/// [`Error::Device`] for a device failure; [`Error::Metric`] naming the dataset for a NaN or
/// infinite value (the host refuses them too).
pub fn device_sketches(
    ctx: &WgpuContext,
    map: &Mapping,
    values: &wgpu::Buffer,
    dataset_of: &wgpu::Buffer,
    n: usize,
    names: &[String],
) -> Result<Vec<Sketch>> {
    let datasets = names.len();
    let nb = map.buckets();
    let stride = 8 + 2 * nb;
    if !ctx.has_f64() {
        // No f64 in shaders: bring the values back and build the sketches on the host.
        return host_sketches(ctx, map, values, dataset_of, n, names);
    }
    let (counts, partials) = run_shader(ctx, map, values, dataset_of, n, datasets)?;
    let chunks = n.div_ceil(CHUNK);
    (0..datasets)
        .map(|d| {
            let c = &counts[d * stride..(d + 1) * stride];
            if c[2] > 0 {
                return Err(not_finite(
                    &names[d],
                    format!("{} values are NaN or infinite", c[2]),
                ));
            }
            let count = c[0] as u64;
            let sum = (0..chunks).fold(0.0, |acc, k| acc + partials[k * datasets + d]);
            let side = |at: usize| {
                (0..nb)
                    .filter(|&j| c[at + j] > 0)
                    .map(|j| (map.min_index + j as i32, c[at + j] as u64))
                    .collect()
            };
            Ok(Sketch {
                count,
                sum,
                min: (count > 0).then(|| from_key(c[3])),
                max: (count > 0).then(|| from_key(c[4])),
                zero: c[1] as u64,
                pos: side(8),
                neg: side(8 + nb),
            })
        })
        .collect()
}

/// The f32 (as f64) whose order key `key` is (the shader's `key`, inverted).
fn from_key(key: u32) -> f64 {
    let bits = if key & 0x8000_0000 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    };
    f32::from_bits(bits) as f64
}

/// Runs `shaders/sketch.wgsl`: per-dataset counts `[D, 8 + 2 nb]` and per-chunk sums
/// `[chunks, D]`.
fn run_shader(
    ctx: &WgpuContext,
    map: &Mapping,
    values: &wgpu::Buffer,
    dataset_of: &wgpu::Buffer,
    n: usize,
    datasets: usize,
) -> Result<(Vec<u32>, Vec<f64>)> {
    use wgpu::BufferUsages as U;
    let nb = map.buckets();
    let stride = 8 + 2 * nb;
    let chunks = n.div_ceil(CHUNK);
    let table = bucket_table(map);
    let mut init = vec![0u32; datasets * stride];
    for d in 0..datasets {
        init[d * stride + 3] = u32::MAX;
    }
    let params = ctx.buffer("sketch params", 16, U::UNIFORM | U::COPY_DST);
    let table_buf = ctx.buffer("bucket table", 4 * nb as u64, U::STORAGE | U::COPY_DST);
    let counts = ctx.buffer(
        "sketch counts",
        4 * init.len() as u64,
        U::STORAGE | U::COPY_DST | U::COPY_SRC,
    );
    let partials = ctx.buffer(
        "sketch partial sums",
        8 * (chunks * datasets) as u64,
        U::STORAGE | U::COPY_SRC,
    );
    let bind = ctx.bind(
        Shader::Sketch,
        &[&params, values, dataset_of, &table_buf, &counts, &partials],
    )?;
    ctx.scoped("bin device values", || {
        let p = [n as u32, datasets as u32, nb as u32, CHUNK as u32];
        ctx.queue()
            .write_buffer(&params, 0, bytemuck::cast_slice(&p));
        ctx.queue()
            .write_buffer(&table_buf, 0, bytemuck::cast_slice(&table));
        ctx.queue()
            .write_buffer(&counts, 0, bytemuck::cast_slice(&init));
        ctx.dispatch(Shader::Sketch, &bind, chunks.div_ceil(64).max(1) as u32)
    })??;
    let back = ctx.read_many(&[
        (&counts, 0, 4 * init.len() as u64),
        (&partials, 0, 8 * (chunks * datasets) as u64),
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

/// The error for device values the host would refuse.
fn not_finite(dataset: &str, reason: String) -> Error {
    Error::Metric {
        dataset: dataset.to_string(),
        metric: "(device values)".into(),
        reason,
    }
}

impl Aggregator {
    /// Records `n` f32 values that live on `ctx`'s device as the DISTRIBUTION metric `metric`
    /// of their datasets: value i belongs to dataset `names[dataset_of[i]]`. The sketches are
    /// built on the device (see [`crate::metrics`]'s device module) and merged here: only
    /// `datasets x buckets` counts cross back, not the values.
    ///
    /// # Errors
    ///
    /// [`Error::Device`]; [`Error::Metric`] for a NaN or infinite value or a kind conflict.
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
        for (name, sketch) in names.iter().zip(&sketches) {
            if sketch.count > 0 {
                self.add_sketch(name, metric, sketch)?;
            }
        }
        Ok(())
    }
}
