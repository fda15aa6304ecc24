// Device f32 values into the distribution sketch of their dataset, as the host's `Sketch::add`
// builds it from the same values (as f64). `kernels/sketch.cu` is its port, line for line.
//
// The bucket of a magnitude comes from a table the host computes from its own mapping: entry j
// holds the bits of the smallest positive f32 whose host bucket is at least `min_index + j`. f32
// bits order like their values, so the bucket is the last entry at or below the value's bits:
// integer comparisons only, which cannot disagree with the host. Magnitudes below the first
// entry (zeros, subnormals, anything under the sketch's smallest value) count as zero; NaN and
// infinities are counted apart, for the host to refuse.
//
// Coalesced: invocation g of the T = 256 * workgroups invocations takes values g, g + T, g + 2T,
// ... Each workgroup counts into a table in workgroup memory (SLOTS slots, each a counts word
// and its value, found by hashing the word): zero, non-finite and bucket counts are adds, the
// minimum and maximum keys maxima (the minimum as the maximum of the inverted key, so that
// every slot starts at 0). After the values, each slot in use goes to the counts with one
// atomic: one per counts word the workgroup touched. A word whose slot cannot be found within
// PROBES steps of its hash (the table is full around it) takes its atomic in the counts
// directly. Duplicated words (a weak compare-exchange may fail spuriously and move on) are
// harmless: every slot's content is added or maximized into the same word. All exact and
// independent of order.
//
// The sum is not: each invocation adds its values in order into an f64 run while the dataset
// stays the same, and adds the run into its own partial, `partials[d * T + g]`, when the dataset
// changes or the values end. The host adds the partials of a dataset in invocation order, so the
// sum depends on the number of workgroups only, not on timing.
//
// llvmpipe bounds the loop iterations of one invocation (65 535, all loops together): the host
// dispatches enough workgroups that an invocation takes at most about 256 values (`CHUNK` in
// `metrics::device`), each a binary search and a few probes.

struct Params {
    n: u32,
    datasets: u32,
    buckets: u32,
    unused: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> values: array<u32>;
@group(0) @binding(2) var<storage, read> dataset_of: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
// Per dataset, 8 + 2 * buckets words: unused (the host derives the count), zero, non-finite,
// min key, max key, three unused, then the positive buckets and the negative ones. The host sets
// the min keys to 0xffffffff and everything else to 0 before the dispatch;
// datasets * (8 + 2 * buckets) < 2^32.
@group(0) @binding(4) var<storage, read_write> counts: array<atomic<u32>>;
// [datasets, T]: each invocation's sum per dataset, zeroed by the host.
@group(0) @binding(5) var<storage, read_write> partials: array<f64>;

// Invocations per workgroup.
const GROUP: u32 = 256u;
// Slots of the workgroup's table (a power of two): 16 KiB with their values, WebGPU's default
// limit of workgroup memory.
const SLOTS: u32 = 2048u;
// Slots tried from a word's hash before it goes to the counts directly.
const PROBES: u32 = 8u;
// No dataset yet in an invocation's run.
const NO_RUN: u32 = 0xffffffffu;

var<workgroup> keys: array<atomic<u32>, SLOTS>;
var<workgroup> vals: array<atomic<u32>, SLOTS>;

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

// The slot of counts word `word` in the workgroup's table, claimed if free; SLOTS when none is
// within PROBES steps of its hash. A slot that holds the word already costs a load.
fn slot_of(word: u32) -> u32 {
    let k = word + 1u; // 0 marks a free slot
    let h = k * 0x9e3779b1u;
    var s = (h ^ (h >> 16u)) & (SLOTS - 1u);
    for (var p = 0u; p < PROBES; p = p + 1u) {
        var held = atomicLoad(&keys[s]);
        var claimed = false;
        if (held == 0u) {
            let r = atomicCompareExchangeWeak(&keys[s], 0u, k);
            held = r.old_value;
            claimed = r.exchanged;
        }
        if (claimed || held == k) {
            return s;
        }
        s = (s + 1u) & (SLOTS - 1u);
    }
    return SLOTS;
}

// Adds 1 to counts word `word`, through the workgroup's table.
fn add_one(word: u32) {
    let s = slot_of(word);
    if (s < SLOTS) {
        atomicAdd(&vals[s], 1u);
    } else {
        atomicAdd(&counts[word], 1u);
    }
}

// Lowers the minimum key `word` holds to `k`, through the table (as a maximum of ~k).
fn lower_to(word: u32, k: u32) {
    let s = slot_of(word);
    if (s < SLOTS) {
        if (atomicLoad(&vals[s]) < ~k) {
            atomicMax(&vals[s], ~k);
        }
    } else {
        atomicMin(&counts[word], k);
    }
}

// Raises the maximum key `word` holds to `k`, through the table.
fn raise_to(word: u32, k: u32) {
    let s = slot_of(word);
    if (s < SLOTS) {
        if (atomicLoad(&vals[s]) < k) {
            atomicMax(&vals[s], k);
        }
    } else {
        atomicMax(&counts[word], k);
    }
}

@compute @workgroup_size(256)
fn main(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    for (var s = lid; s < SLOTS; s = s + GROUP) {
        atomicStore(&keys[s], 0u);
        atomicStore(&vals[s], 0u);
    }
    workgroupBarrier();

    let threads = groups.x * GROUP;
    let g = gid.x;
    let n = params.n;
    let stride = 8u + 2u * params.buckets;
    var run = NO_RUN;
    var run_sum = f64(0.0);
    var run_min = 0xffffffffu;
    var run_max = 0u;
    // The next index is i + T, or n where that would pass n (no wrap past u32).
    for (var i = g; i < n; i = select(n, i + threads, n - i > threads)) {
        let d = dataset_of[i];
        if (d >= params.datasets) {
            continue;
        }
        let base = d * stride;
        let bits = values[i];
        let mag = bits & 0x7fffffffu;
        if (mag >= 0x7f800000u) {
            add_one(base + 2u);
            continue;
        }
        if (d != run) {
            if (run != NO_RUN) {
                partials[run * threads + g] = partials[run * threads + g] + run_sum;
                lower_to(run * stride + 3u, run_min);
                raise_to(run * stride + 4u, run_max);
            }
            run = d;
            run_sum = f64(0.0);
            run_min = 0xffffffffu;
            run_max = 0u;
        }
        run_sum = run_sum + f64(bitcast<f32>(bits));
        let k = key(bits);
        run_min = min(run_min, k);
        run_max = max(run_max, k);
        if (mag < table[0]) {
            add_one(base + 1u);
        } else if ((bits & 0x80000000u) == 0u) {
            add_one(base + 8u + bucket(mag));
        } else {
            add_one(base + 8u + params.buckets + bucket(mag));
        }
    }
    if (run != NO_RUN) {
        partials[run * threads + g] = partials[run * threads + g] + run_sum;
        lower_to(run * stride + 3u, run_min);
        raise_to(run * stride + 4u, run_max);
    }
    workgroupBarrier();

    for (var s = lid; s < SLOTS; s = s + GROUP) {
        let k = atomicLoad(&keys[s]);
        if (k == 0u) {
            continue;
        }
        let word = k - 1u;
        let v = atomicLoad(&vals[s]);
        let at = word % stride;
        if (at == 3u) {
            atomicMin(&counts[word], ~v);
        } else if (at == 4u) {
            atomicMax(&counts[word], v);
        } else {
            atomicAdd(&counts[word], v);
        }
    }
}
