// Device f32 values into the distribution sketch of their dataset, as the host's `Sketch::add`
// builds it from the same values (as f64).
//
// The bucket of a magnitude comes from a table the host computes from its own mapping: entry j
// holds the bits of the smallest positive f32 whose host bucket is at least `min_index + j`. f32
// bits order like their values, so the bucket is the last entry at or below the value's bits:
// integer comparisons only, which cannot disagree with the host. Magnitudes below the first
// entry (zeros, subnormals, anything under the sketch's smallest value) count as zero; NaN and
// infinities are counted apart, for the host to refuse.
//
// Counts and buckets are atomic adds, the minimum and maximum atomic min/max of an
// order-preserving key (-0.0 below 0.0, as the host's total order has it): all exact and
// independent of order. The sum is not: each invocation adds its chunk of values in order into
// an f64 partial per dataset, and the host adds the partials in chunk order.
//
// Invocations are short (one chunk of `params.chunk` values each): llvmpipe bounds the loop
// iterations of one invocation.

struct Params {
    n: u32,
    datasets: u32,
    buckets: u32,
    chunk: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> values: array<u32>;
@group(0) @binding(2) var<storage, read> dataset_of: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
// Per dataset, 8 + 2 * buckets words: count, zero, non-finite, min key, max key, three unused,
// then the positive buckets and the negative ones. The host sets the min keys to 0xffffffff and
// everything else to 0 before the dispatch.
@group(0) @binding(4) var<storage, read_write> counts: array<atomic<u32>>;
// [chunks, datasets]: each chunk's sum per dataset.
@group(0) @binding(5) var<storage, read_write> partials: array<f64>;

fn bucket(mag: u32) -> u32 {
    // The last j with table[j] <= mag (table[0] <= mag holds).
    var lo = 0u;
    var hi = params.buckets;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (table[mid] <= mag) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// f32 bits to a key whose unsigned order is the values' total order.
fn key(bits: u32) -> u32 {
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let first = c * params.chunk;
    if (first >= params.n) {
        return;
    }
    let row = c * params.datasets;
    for (var d = 0u; d < params.datasets; d = d + 1u) {
        partials[row + d] = f64(0.0);
    }
    let stride = 8u + 2u * params.buckets;
    let end = min(params.n, first + params.chunk);
    for (var i = first; i < end; i = i + 1u) {
        let d = dataset_of[i];
        if (d >= params.datasets) {
            continue;
        }
        let base = d * stride;
        let bits = values[i];
        let mag = bits & 0x7fffffffu;
        if (mag >= 0x7f800000u) {
            atomicAdd(&counts[base + 2u], 1u);
            continue;
        }
        atomicAdd(&counts[base], 1u);
        partials[row + d] = partials[row + d] + f64(bitcast<f32>(bits));
        atomicMin(&counts[base + 3u], key(bits));
        atomicMax(&counts[base + 4u], key(bits));
        if (mag < table[0]) {
            atomicAdd(&counts[base + 1u], 1u);
        } else if ((bits & 0x80000000u) == 0u) {
            atomicAdd(&counts[base + 8u + bucket(mag)], 1u);
        } else {
            atomicAdd(&counts[base + 8u + params.buckets + bucket(mag)], 1u);
        }
    }
}
