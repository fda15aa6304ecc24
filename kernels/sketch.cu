// Device f32 values into the distribution sketch of their dataset: the port of
// `shaders/sketch.wgsl`, with the same table, layout and semantics (see there and
// `metrics::device`). The bucket of a magnitude is the last table entry at or below its bits:
// integer comparisons only, so the bucket equals the host's. Counts and buckets are atomic adds,
// minimum and maximum atomic min/max of an order-preserving key; each thread adds its chunk of
// `chunk` values in order into an f64 partial per dataset, which the host adds in chunk order.
//
// counts: per dataset, 8 + 2 * buckets words: count, zero, non-finite, min key (preset to
// 0xffffffff), max key, three unused, the positive buckets, then the negative ones.
// partials: [chunks, datasets].

typedef unsigned int u32;

__device__ u32 bucket_of(const u32* __restrict__ table, u32 buckets, u32 mag)
{
    u32 lo = 0;
    u32 hi = buckets;
    while (hi - lo > 1) {
        u32 mid = (lo + hi) / 2;
        if (table[mid] <= mag) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    return lo;
}

// f32 bits to a key whose unsigned order is the values' total order.
__device__ u32 order_key(u32 bits)
{
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

extern "C" __global__ void sketch(
    u32 n, u32 datasets, u32 buckets, u32 chunk,
    const u32* __restrict__ values,
    const u32* __restrict__ dataset_of,
    const u32* __restrict__ table,
    u32* __restrict__ counts,
    double* __restrict__ partials)
{
    u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long first = (unsigned long long)c * chunk;
    if (first >= n) {
        return;
    }
    unsigned long long row = (unsigned long long)c * datasets;
    for (u32 d = 0; d < datasets; ++d) {
        partials[row + d] = 0.0;
    }
    u32 stride = 8 + 2 * buckets;
    unsigned long long end = first + chunk < n ? first + chunk : n;
    for (unsigned long long i = first; i < end; ++i) {
        u32 d = dataset_of[i];
        if (d >= datasets) {
            continue;
        }
        unsigned long long base = (unsigned long long)d * stride;
        u32 bits = values[i];
        u32 mag = bits & 0x7fffffffu;
        if (mag >= 0x7f800000u) {
            atomicAdd(&counts[base + 2], 1u);
            continue;
        }
        atomicAdd(&counts[base], 1u);
        partials[row + d] += (double)__int_as_float((int)bits);
        atomicMin(&counts[base + 3], order_key(bits));
        atomicMax(&counts[base + 4], order_key(bits));
        if (mag < table[0]) {
            atomicAdd(&counts[base + 1], 1u);
        } else if ((bits & 0x80000000u) == 0) {
            atomicAdd(&counts[base + 8 + bucket_of(table, buckets, mag)], 1u);
        } else {
            atomicAdd(&counts[base + 8 + buckets + bucket_of(table, buckets, mag)], 1u);
        }
    }
}
