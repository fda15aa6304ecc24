// Elementwise reduction of `ranks` stacked u64 buffers of `len` values, each value a pair of
// u32 (low, high) since WGSL has no 64-bit integers: sums carry from the low word into the high
// one and wrap at 2^64 (as the host engine's wrapping add); max and min compare (high, low).

struct Params {
    len: u32,
    ranks: u32,
    // 0 sum, 1 max, 2 min.
    op: u32,
    _unused: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> stacked: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec2<u32>>;

fn less(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.y < b.y || (a.y == b.y && a.x < b.x);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= params.len) {
        return;
    }
    var acc = stacked[i];
    for (var r = 1u; r < params.ranks; r = r + 1u) {
        let v = stacked[r * params.len + i];
        if (params.op == 0u) {
            let low = acc.x + v.x;
            let carry = select(0u, 1u, low < acc.x);
            acc = vec2<u32>(low, acc.y + v.y + carry);
        } else if (params.op == 1u) {
            acc = select(acc, v, less(acc, v));
        } else {
            acc = select(acc, v, less(v, acc));
        }
    }
    out[i] = acc;
}
