// Elementwise reduction of `ranks` stacked f64 buffers of `len` values, in rank order, so every
// rank gets the same bits as the host engine: acc = v0; acc = op(acc, v_r) for r = 1, 2, ...
// Max keeps the earlier value on ties (v > acc), as the host engine does; min likewise.

struct Params {
    len: u32,
    ranks: u32,
    // 0 sum, 1 max, 2 min.
    op: u32,
    _unused: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> stacked: array<f64>;
@group(0) @binding(2) var<storage, read_write> out: array<f64>;

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
            acc = acc + v;
        } else if (params.op == 1u) {
            acc = select(acc, v, v > acc);
        } else {
            acc = select(acc, v, v < acc);
        }
    }
    out[i] = acc;
}
