//! Distribution sketches of values that live on a device (per-sample losses computed on the
//! GPU, say), built there by `shaders/sketch.wgsl` (wgpu) or `kernels/sketch.cu` (CUDA), ports
//! of each other, so that only the sketches come back.
//!
//! The device must build the sketch the host builds from the same values. Each value is an
//! f32; the host records it as f64 (exactly). The bucket comes from a table of f32 bit patterns
//! that this module computes with the host's own [`Mapping`]: entry `j` is the smallest positive
//! f32 whose host bucket is at least `min_index + j`. Positive f32 bits order like their values,
//! and the host's bucket never falls as the value rises (its polynomial is increasing, and
//! adjacent f32 values differ by far more than the f64 rounding of its evaluation), so the last
//! entry at or below a value's bits is its host bucket: the device compares integers only.
//!
//! The kernels are coalesced: thread `g` of `T` takes values `g, g + T, ...`; each block counts
//! into a table in shared (workgroup) memory and adds it to the global counts with one atomic
//! per word it touched. Buckets, zero count, minimum and maximum are integer adds and min/max,
//! so they are exactly the host's whatever the grid or the timing; the count is their sum. The
//! sum is not added one value at a time: each thread adds its values in order in runs of one
//! dataset into its own f64 partial, and the host adds the partials in thread order
//! ([`sketch_groups`] fixes the grid from the number of values, the same on wgpu and CUDA). So
//! the sum is deterministic, but may differ from the host's running sum in the last bits: both
//! lie within `n * 2^-53 * sum |v|` of the exact sum of `n` values.

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "wgpu")]
mod wgpu;

#[cfg(feature = "cuda")]
pub use self::cuda::*;
#[cfg(feature = "wgpu")]
pub use self::wgpu::*;

use super::Aggregator;
use super::sketch::{MAX_VALUE, MIN_VALUE, Mapping, Sketch};
use crate::error::{Error, Result};

/// Values one kernel thread (shader invocation) takes at most, about: llvmpipe bounds the loop
/// iterations of an invocation (65 535 in all), and each value costs a binary search and a few
/// probes of the block's table.
pub(crate) const CHUNK: usize = 256;

/// Threads per block (workgroup) of the sketch kernels: the shader's `GROUP`, the CUDA launch's
/// block.
pub(crate) const GROUP: usize = 256;

/// The most blocks of a sketch launch: WebGPU's limit of workgroups in one dimension. With
/// [`CHUNK`] values a thread it covers `u32::MAX` values, the kernels' limit.
pub(crate) const MAX_GROUPS: usize = 65_535;

/// The blocks (workgroups) a sketch launch over `n` values uses: enough that a thread takes at
/// most about [`CHUNK`] values, at least one. The sum's partition follows from it, so both
/// devices use this.
#[doc(hidden)] // Public for the kernel-on-CPU tests only (tests/cuda_kernels_on_cpu.rs).
pub fn sketch_groups(n: usize) -> usize {
    n.div_ceil(GROUP * CHUNK).clamp(1, MAX_GROUPS)
}

/// The table of f32 bit patterns: entry `j` is the smallest positive f32 whose bucket under `map`
/// is at least `map.min_index + j`; entry 0 is the smallest f32 that is not counted as zero.
#[doc(hidden)] // Public for the device conformance tests only (tests/wgpu.rs, tests/cuda.rs).
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

/// Per-dataset counts `[D, 8 + 2 nb]` as the sketch kernels expect them before a launch: unused
/// (the count is derived), zero, non-finite, minimum key (preset to `u32::MAX`), maximum key,
/// three unused, then the positive and the negative buckets.
#[doc(hidden)] // Public for the kernel-on-CPU tests only.
pub fn initial_counts(datasets: usize, buckets: usize) -> Vec<u32> {
    let stride = 8 + 2 * buckets;
    let mut init = vec![0u32; datasets * stride];
    for d in 0..datasets {
        init[d * stride + 3] = u32::MAX;
    }
    init
}

/// The sketches of `names` from a sketch kernel's counts (`[D, 8 + 2 nb]`) and per-thread
/// partial sums (`[D, threads]`, added in thread order).
///
/// # Errors
///
/// [`Error::Metric`] naming the dataset when its values held a NaN or an infinity.
#[doc(hidden)] // Public for the kernel-on-CPU tests only.
pub fn sketches_from(
    map: &Mapping,
    counts: &[u32],
    partials: &[f64],
    threads: usize,
    names: &[String],
) -> Result<Vec<Sketch>> {
    let nb = map.buckets();
    let stride = 8 + 2 * nb;
    names
        .iter()
        .enumerate()
        .map(|(d, name)| {
            let c = &counts[d * stride..(d + 1) * stride];
            if c[2] > 0 {
                return Err(not_finite(
                    name,
                    format!("{} values are NaN or infinite", c[2]),
                ));
            }
            let buckets = &c[8..];
            let count = c[1] as u64 + buckets.iter().map(|&b| b as u64).sum::<u64>();
            let sum = partials[d * threads..(d + 1) * threads]
                .iter()
                .fold(0.0, |acc, p| acc + p);
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

/// The error for device values the host would refuse.
fn not_finite(dataset: &str, reason: String) -> Error {
    Error::Metric {
        dataset: dataset.to_string(),
        metric: "(device values)".into(),
        reason,
    }
}

impl Aggregator {
    /// Merges device-built `sketches` (one per name) as the DISTRIBUTION metric `metric`.
    pub(crate) fn add_device_sketches(
        &mut self,
        names: &[String],
        metric: &str,
        sketches: &[Sketch],
    ) -> Result<()> {
        for (name, sketch) in names.iter().zip(sketches) {
            if sketch.count > 0 {
                self.add_sketch(name, metric, sketch)?;
            }
        }
        Ok(())
    }
}
