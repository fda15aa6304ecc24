// Device f32 values into the distribution sketch of their dataset: the port of
// `shaders/sketch.wgsl`, with the same table, layout, grid and order of addition (see there and
// `metrics::device`). The bucket of a magnitude is the last table entry at or below its bits:
// integer comparisons only, so the bucket equals the host's.
//
// Coalesced: thread g of the T = gridDim.x * blockDim.x threads takes values g, g + T, g + 2T,
// ... Each block counts into a table in shared memory (SLOTS slots, each a counts word and its
// value, found by hashing the word): zero, non-finite and bucket counts are adds, the minimum
// and maximum keys maxima (the minimum as the maximum of the inverted key). After the values,
// each slot in use goes to global memory with one atomic: one per counts word the block
// touched. A word whose slot cannot be found within PROBES steps of its hash (the table is
// full around it) takes its atomic in global memory directly. Duplicated words (two slots of
// one word) are harmless: every slot's content is added or maximized into the same word.
//
// Sums are not atomic: each thread adds its values in order into an f64 run while the dataset
// stays the same, and adds the run into its own partial, partials[d * T + g], when the dataset
// changes or the values end. The host adds the partials of a dataset in thread order, so the
// sum depends on the grid only, not on timing.
//
// counts: per dataset, 8 + 2 * buckets words: unused (the host derives the count), zero,
// non-finite, minimum key (preset to 0xffffffff), maximum key, three unused, the positive
// buckets, then the negative ones; datasets * (8 + 2 * buckets) < 2^32 words. partials:
// [datasets, T], zeroed by the host. Threads must take part in both __syncthreads (no early
// return).
//
// NVRTC has no standard headers: fixed-width types are spelled out.

typedef unsigned int u32;
typedef unsigned long long u64;

// Slots of the block's table (a power of two): 16 KiB of shared memory with their values, as
// the shader's workgroup table (WebGPU's default limit for a workgroup).
#ifndef SKETCH_SLOTS
#define SKETCH_SLOTS 2048u
#endif
// Slots tried from a word's hash before it goes to global memory.
#define SKETCH_PROBES 8u
// No dataset yet in a thread's run.
#define NO_RUN 0xffffffffu
// A read of a shared word that other threads change with atomics (the CPU harness,
// tests/cpu_kernels, makes it an atomic load).
#ifndef SHARED_LOAD
#define SHARED_LOAD(p) (*(volatile u32*)(p))
#endif

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

// The slot of counts word `word` in the block's table, claimed if free; SKETCH_SLOTS when none
// is within SKETCH_PROBES steps of its hash. A slot that holds the word already costs a read.
__device__ u32 slot_of(u32* keys, u32 word)
{
    u32 key = word + 1;  // 0 marks a free slot
    u32 h = key * 0x9e3779b1u;
    u32 s = (h ^ (h >> 16)) & (SKETCH_SLOTS - 1);
    for (u32 p = 0; p < SKETCH_PROBES; ++p) {
        u32 held = SHARED_LOAD(&keys[s]);
        if (held == 0u) {
            held = atomicCAS(&keys[s], 0u, key);
        }
        if (held == 0u || held == key) {
            return s;
        }
        s = (s + 1) & (SKETCH_SLOTS - 1);
    }
    return SKETCH_SLOTS;
}

// Adds 1 to counts word `word`, through the block's table.
__device__ void add_one(u32* keys, u32* vals, u32* __restrict__ counts, u32 word)
{
    u32 s = slot_of(keys, word);
    if (s < SKETCH_SLOTS) {
        atomicAdd(&vals[s], 1u);
    } else {
        atomicAdd(&counts[word], 1u);
    }
}

// Lowers the minimum key `word` holds to `key`, through the block's table (as a maximum of ~key).
__device__ void lower_to(u32* keys, u32* vals, u32* __restrict__ counts, u32 word, u32 key)
{
    u32 s = slot_of(keys, word);
    if (s < SKETCH_SLOTS) {
        if (SHARED_LOAD(&vals[s]) < ~key) {
            atomicMax(&vals[s], ~key);
        }
    } else {
        atomicMin(&counts[word], key);
    }
}

// Raises the maximum key `word` holds to `key`, through the block's table.
__device__ void raise_to(u32* keys, u32* vals, u32* __restrict__ counts, u32 word, u32 key)
{
    u32 s = slot_of(keys, word);
    if (s < SKETCH_SLOTS) {
        if (SHARED_LOAD(&vals[s]) < key) {
            atomicMax(&vals[s], key);
        }
    } else {
        atomicMax(&counts[word], key);
    }
}

extern "C" __global__ void sketch(
    u32 n, u32 datasets, u32 buckets,
    const u32* __restrict__ values,
    const u32* __restrict__ dataset_of,
    const u32* __restrict__ table,
    u32* __restrict__ counts,
    double* __restrict__ partials)
{
    __shared__ u32 keys[SKETCH_SLOTS];
    __shared__ u32 vals[SKETCH_SLOTS];
    for (u32 s = threadIdx.x; s < SKETCH_SLOTS; s += blockDim.x) {
        keys[s] = 0;
        vals[s] = 0;
    }
    __syncthreads();

    u32 threads = gridDim.x * blockDim.x;
    u32 g = blockIdx.x * blockDim.x + threadIdx.x;
    u32 stride = 8 + 2 * buckets;
    u32 run = NO_RUN;
    double run_sum = 0.0;
    u32 run_min = 0xffffffffu;
    u32 run_max = 0;
    // The next index is i + T, or n where that would pass n (no wrap past u32).
    for (u32 i = g; i < n; i = n - i > threads ? i + threads : n) {
        u32 d = dataset_of[i];
        if (d >= datasets) {
            continue;
        }
        u32 base = d * stride;
        u32 bits = values[i];
        u32 mag = bits & 0x7fffffffu;
        if (mag >= 0x7f800000u) {
            add_one(keys, vals, counts, base + 2);
            continue;
        }
        if (d != run) {
            if (run != NO_RUN) {
                partials[(u64)run * threads + g] += run_sum;
                lower_to(keys, vals, counts, run * stride + 3, run_min);
                raise_to(keys, vals, counts, run * stride + 4, run_max);
            }
            run = d;
            run_sum = 0.0;
            run_min = 0xffffffffu;
            run_max = 0;
        }
        run_sum += (double)__int_as_float((int)bits);
        u32 key = order_key(bits);
        run_min = key < run_min ? key : run_min;
        run_max = key > run_max ? key : run_max;
        if (mag < table[0]) {
            add_one(keys, vals, counts, base + 1);
        } else if ((bits & 0x80000000u) == 0) {
            add_one(keys, vals, counts, base + 8 + bucket_of(table, buckets, mag));
        } else {
            add_one(keys, vals, counts, base + 8 + buckets + bucket_of(table, buckets, mag));
        }
    }
    if (run != NO_RUN) {
        partials[(u64)run * threads + g] += run_sum;
        lower_to(keys, vals, counts, run * stride + 3, run_min);
        raise_to(keys, vals, counts, run * stride + 4, run_max);
    }
    __syncthreads();

    for (u32 s = threadIdx.x; s < SKETCH_SLOTS; s += blockDim.x) {
        u32 key = keys[s];
        if (key == 0u) {
            continue;
        }
        u32 word = key - 1;
        u32 v = vals[s];
        u32 at = word % stride;
        if (at == 3) {
            atomicMin(&counts[word], ~v);
        } else if (at == 4) {
            atomicMax(&counts[word], v);
        } else {
            atomicAdd(&counts[word], v);
        }
    }
}
